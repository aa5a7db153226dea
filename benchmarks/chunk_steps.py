"""Speed of the chunked GEMM path's elementwise row steps: one chunk, as ``chunked_forward`` /
``chunked_backward`` size and run it, per mode (``MHTMA_CHUNK_STEPS``: triton | eager | compile), with the
bandwidth that the time means at the bytes per score of docs/kernel-notes.md, and a check that the Triton
steps give the eager steps' values on this device.

    PYTHONPATH=. python -m benchmarks.chunk_steps                   # CUDA: B=16, H=2, 64x64 map, bf16
    PYTHONPATH=. python -m benchmarks.chunk_steps --nk 16384        # a 128x128 map
    PYTHONPATH=. python -m benchmarks.chunk_steps --modes triton,eager,compile --json out.json
    PYTHONPATH=. python -m benchmarks.chunk_steps --smoke           # tiny (no GPU: CPU, TRITON_INTERPRET=1)

Exit status 1 when a step's values differ from the eager step's or a step fell back to eager (its
warning says why). A step's time is the median of (copy the pristine s / dp into the chunk's buffers + the step) minus the
median of the copy alone: the eager steps consume their inputs, so every call needs fresh buffers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from mhtma_kernels.ops.chunked import gemm as chunked
from mhtma_kernels.testing import TOLERANCE, assert_close

from .cases import DTYPES
from .timing import median_ms, synchronize

#: (step, variant, bytes per score: HBM traffic if every second read hits L2, if none does; bf16 / fp16
#: operands, fp32 scores; see docs/kernel-notes.md)
STEPS = (("forward", "row max", (6, 10)), ("forward", "fixed max", (6, 6)),
         ("backward", "natural", (12, 20)), ("backward", "base 2", (12, 20)))
LAMBDA_M = 1e4


def chunk(bh: int, rows: int, nk: int, device: str, seed: int = 0) -> dict:
    """Pristine fp32 inputs of one chunk: s (|s| <= 1), dp, scale = 1/t (t = 0.1), invalid (bh 0: all)."""
    g = torch.Generator().manual_seed(seed)
    invalid = torch.rand(bh, 1, nk, generator=g) < 0.3
    invalid[0] = True
    data = dict(s=torch.rand(bh, rows, nk, generator=g) * 2 - 1, dp=torch.randn(bh, rows, nk, generator=g),
                scale=torch.full((bh, 1, 1), 10.0), invalid=invalid)
    return {k: v.to(device) for k, v in data.items()}


def step_call(step: str, variant: str, mode: str, x: dict, operand: torch.dtype):
    """(run, buffers): run() copies the pristine s (and dp) into the buffers and runs one step in `mode`."""
    os.environ["MHTMA_CHUNK_STEPS"] = mode
    fn = chunked._step(step, x["s"].device, torch.float32)
    work = {k: torch.empty_like(x[k]) for k in ("s", "dp")}
    base2 = variant == "base 2"
    scale = x["scale"] * chunked.LOG2E if base2 else x["scale"]
    fill = -LAMBDA_M * (chunked.LOG2E if base2 else 1.0)
    m_fixed = torch.where(x["invalid"].all(-1, keepdim=True), torch.full_like(scale, fill), scale)
    m = chunked._forward_rows_eager(x["s"].clone(), scale, x["invalid"], fill, None, torch.float32)[1]

    def run():
        work["s"].copy_(x["s"])
        if step == "forward":
            return fn(work["s"], scale, x["invalid"], fill, m_fixed if variant == "fixed max" else None, operand)
        work["dp"].copy_(x["dp"])
        return fn(work["s"], work["dp"], scale, x["invalid"], fill, m, base2, operand)

    def copy_only():
        work["s"].copy_(x["s"])
        if step == "backward":
            work["dp"].copy_(x["dp"])

    return run, copy_only


def same_values(triton_out, eager_out, operand: torch.dtype) -> str:
    """'yes', or the first mismatch (tolerances of mhtma_kernels.testing for each output's dtype)."""
    try:
        for a, e in zip(triton_out, eager_out):
            assert_close(a.cpu(), e.double().cpu(), a.dtype if a.dtype in TOLERANCE else operand)
    except AssertionError as error:
        return " ".join(str(error).split())[:120]
    return "yes"


def measure(args) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bh, nq, nk = args.batch * args.heads, args.nq or args.nk, args.nk
    operand = chunked.gemm_dtype(DTYPES[args.dtype], torch.device(device))
    budget = chunked.chunk_budget_mb(torch.device(device))
    records = []
    for step, variant, (low, high) in STEPS:
        rows = chunked.step_rows(step, bh, nq, nk, torch.float32, operand, budget)
        x = chunk(bh, rows, nk, device)
        outputs = {}
        for mode in args.modes:
            run, copy_only = step_call(step, variant, mode, x, operand)
            outputs[mode] = [t.clone() for t in run()]
            synchronize(device)
            ms = median_ms(run, device)[0] - median_ms(copy_only, device)[0]
            scores = bh * rows * nk
            records.append(dict(step=step, variant=variant, mode=mode, bh=bh, rows=rows, nk=nk,
                                operand=str(operand).removeprefix("torch."), ms=ms,
                                gbps=[scores * b / max(ms, 1e-9) / 1e6 for b in (low, high)],
                                same_as_eager=same_values(outputs[mode], outputs["eager"], operand)
                                if "eager" in outputs and mode != "eager" else None,
                                fell_back=(mode, step) in chunked._BROKEN))
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chunk_steps", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--nq", type=int, default=None, help="query rows (default: Nk)")
    parser.add_argument("--nk", type=int, default=3844)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="the op's input dtype")
    parser.add_argument("--modes", default="eager,triton", help="comma-separated: eager first for the check")
    parser.add_argument("--smoke", action="store_true",
                        help="B=1 H=2 Nq=8 Nk=24 (without a GPU: on CPU under TRITON_INTERPRET=1)")
    parser.add_argument("--json", help="also write the records here")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.smoke:
        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton's first import (ops/chunked/row_kernels.py)
        args.batch, args.heads, args.nk, args.nq = 1, 2, 24, 8
    elif not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --smoke)")
    before = os.environ.get("MHTMA_CHUNK_STEPS")
    try:
        records = measure(args)
    finally:
        os.environ.pop("MHTMA_CHUNK_STEPS", None)
        if before is not None:
            os.environ["MHTMA_CHUNK_STEPS"] = before
    print("| step | variant | mode | rows x Nk x BH | ms | GB/s (L2 hits .. none) | same as eager |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['step']} | {r['variant']} | {r['mode']} | {r['rows']} x {r['nk']} x {r['bh']} | {r['ms']:.3f} | "
              f"{r['gbps'][0]:.0f} .. {r['gbps'][1]:.0f} | {r['same_as_eager'] or ''}"
              f"{' (FELL BACK to eager)' if r['fell_back'] else ''} |")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(records, file, indent=1)
    return 0 if all(r["same_as_eager"] in (None, "yes") and not r["fell_back"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
