"""The compile report (benchmarks.compile_report): what ptxas makes of the kernels as the launcher
launches them on sm_90 (and, with --arch, other GPUs). The compile runs in a subprocess (this process interprets the kernels)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from benchmarks import compile_report  # noqa: E402

TTGIR = """
    %a = tt.load %p0 : tensor<64x32x!tt.ptr<bf16>, #blocked>
    %r = scf.for %i = %c0 to %n step %c1 iter_args(%x = %z) -> (tensor<64x32xf32>) : i32 {
      %b = tt.load %p1, %m : tensor<32x64x!tt.ptr<bf16>, #blocked>
      %c = tt.load %p2 : tensor<32x!tt.ptr<i8>, #blocked1>
      scf.yield %x : tensor<64x32xf32>
    }
    %d = tt.load %p3 : tensor<16x16x!tt.ptr<f32>, #blocked>
"""

SASS = """
        /*0100*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT ;
        /*0110*/              @!P0 LDGSTS.E.BYPASS.128 [R3], desc[UR6][R4.64] ;
        /*0120*/                   LDG.E.U8 R5, desc[UR6][R6.64] ;
        /*0130*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0140*/                   LDGDEPBAR ;
        /*0150*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR12], R24 ;
"""


def test_tile_loads_inside_loops_are_told_apart():
    assert compile_report._sync_tile_loads(TTGIR) == (3, 1)  # the 1-D load of the mask is not a tile


def test_sass_instructions_counted_by_family():
    counts = compile_report.sass_counts(SASS)
    assert counts == dict(HGMMA=2, HMMA=0, UTCHMMA=0, UTCQMMA=0, LDGSTS=1, UTMALDG=0, LDG=1, BAR=1)


def report_rows(tmp_path, *arguments: str) -> list[dict]:
    """Rows of ``python -m benchmarks.compile_report ARGUMENTS --json`` run in a fresh process with its own
    Triton cache and without the interpreter; skips where the toolchain ships no sm_90 assembler."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in [env.get("PYTHONPATH")] if p])
    command = [sys.executable, "-m", "benchmarks.compile_report", *arguments, "--json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "ships no" in result.stderr:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_report_of_one_small_forward_as_launched(tmp_path):
    """bf16 forward at D = 48, compiled for sm_90 through the launcher: tensor cores via wgmma, no mma.sync,
    no spills, the shared memory of an H100/H200."""
    rows = report_rows(tmp_path, "--d", "48", "--batch", "1", "--heads", "1", "--nq", "64", "--nk", "48", "--forward-only")
    # the bounded bf16 forward is two launches: the fixed-max pass and the running-max rest
    assert [(compile_report.family(r["kernel"]), r["launch"], r["config"]) for r in rows] == [
        ("fwd", 1, "default"), ("fwd", 2, "default")], rows
    for row in rows:
        assert 0 < row["regs"] <= 255 and row["stack"] == 0, row
        assert row["HGMMA"] > 0 and row["HMMA"] == 0, row
        assert 0 < row["smem"] <= 227 * 1024, row


def test_report_for_an_rtx_3090_uses_its_tiles_and_mma_sync(tmp_path):
    """--arch 86: the driver stub reports an sm_86 GPU with 99 KB per block; the launcher sizes for it and the
    forward compiles to mma.sync (no wgmma on sm_86) within its shared memory."""
    rows = report_rows(tmp_path, "--arch", "86", "--d", "48", "--batch", "1", "--heads", "1", "--nq", "64", "--nk", "48",
                       "--forward-only")
    assert rows and all(r["arch"] == 86 for r in rows), rows
    for row in rows:
        assert row["stack"] == 0 and row["HMMA"] > 0 and row["HGMMA"] == 0, row
        assert 0 < row["smem"] <= 101376, row


@pytest.mark.parametrize("dtype, d, launches", [("fp16", 576, 1), ("fp32", 288, 2)], ids=["fp16-D576", "fp32-D288"])
def test_forward_fixed_choice_that_once_spilled_compiles_without_stack(dtype, d, launches, tmp_path):
    """Forward v3 as launched at the benchmark's Nq, Nk where a key-mask load before the score dots makes it spill on sm_90 (fp16 D = 576: 352 B, the
    fp32 running-max rest pass at D = 288: 80 B, both from the order of the key-mask load; kernel-notes,
    "Version 3"): every launch without stack, on wgmma only."""
    rows = report_rows(tmp_path, "--d", str(d), "--dtype", dtype, "--batch", "1", "--heads", "2", "--forward-only")
    assert [r["launch"] for r in rows] == list(range(1, launches + 1)), rows
    for row in rows:
        assert row["stack"] == 0, f"{dtype} D={d} launch #{row['launch']} spills {row['stack']} B"
        assert row["HGMMA"] > 0 and row["HMMA"] == 0, row
        assert row["sync_2d_loads_in_loops"] == 0, row


def test_under_the_interpreter_the_report_refuses_in_one_line(capsys):
    """This process interprets the kernels (conftest, without a GPU): nothing to compile, a usage error (exit 2)."""
    from mhtma_kernels.ops.triton import launcher

    if not launcher.interpreting():
        pytest.skip("the kernels are compiled in this process (a GPU is present)")
    with pytest.raises(SystemExit) as exit_info:
        compile_report.main(["--d", "48", "--forward-only"])
    assert exit_info.value.code == 2
    assert "without TRITON_INTERPRET=1" in capsys.readouterr().err


def test_access_widths_by_bits():
    sass = """
        /*0010*/                   LDG.E.128 R4, desc[UR6][R2.64] ;
        /*0020*/              @!P0 LDG.E.U8 R5, desc[UR6][R6.64] ;
        /*0030*/                   STG.E.U16 desc[UR6][R2.64], R7 ;
        /*0040*/                   STG.E.64 desc[UR6][R2.64], R8 ;
        /*0050*/                   LDG.E R9, desc[UR6][R2.64] ;
"""
    assert compile_report.access_widths(sass) == {"LDG.128": 1, "LDG.32": 1, "LDG.8": 1, "STG.16": 1, "STG.64": 1}


def test_chunk_step_kernels_compile_with_vector_loads(tmp_path):
    """--chunk-steps: both row-step kernels in both variants for sm_90 as the chunked path launches them; Nk = 100
    (a multiple of 4, not of 16) still loads the fp32 scores as 128-bit vectors (ALIGN 4), no spills."""
    rows = report_rows(tmp_path, "--chunk-steps", "--batch", "1", "--heads", "2", "--nq", "20", "--nk", "100")
    assert [(r["kernel"], r["variant"]) for r in rows] == [
        ("chunk_forward_rows_kernel", "row max"), ("chunk_forward_rows_kernel", "fixed max"),
        ("chunk_backward_rows_kernel", "natural"), ("chunk_backward_rows_kernel", "base 2")], rows
    for row in rows:
        assert row["align"] == 4 and row["stack"] == 0 and 0 < row["regs"] <= 255, row
        assert row.get("LDG.128", 0) > 0 and row["HGMMA"] == row["HMMA"] == 0, row
