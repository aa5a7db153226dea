"""What ptxas makes of the fused kernels exactly as the launcher launches them on a GPU, without a GPU.

    python -m benchmarks.compile_report [--arch 90] [--d 288,432,576,864] [--dtype bf16] [--candidates]
                                               [--batch 16 --heads 2 --nq 4096 --nk 3844] [--forward-only] [--json]
                                               [--fp32-precision tf32|ieee]
    python -m benchmarks.compile_report --chunk-steps [--dtype bf16] [--batch 16 --heads 2 --nq 3844 --nk 3844]

How. Triton's JIT specialises every launch argument before it compiles: pointers 16-byte aligned, ints
divisible by 16 (or equal to 1) become compile-time facts, and those facts decide whether tile loads are
vectorised and pipelined (cp.async, TMA). Compiling a kernel from a hand-written signature skips that and
yields a binary that never runs on the device. Here the active driver is replaced by a stub that reports
``GPUTarget("cuda", arch, 32)`` and that GPU's shared memory and SM count (``--arch``: 80 A100, 86 RTX 3090,
89 RTX 4090, 90 H100/H200, 100 B200, 120 RTX 5090; the launcher's device model reads them as on the device),
``JITFunction.run`` is forced into warmup mode (compile, never launch), then the launcher itself
(``launch_forward`` and ``launch_backward``) is called on CPU tensors of the real shape: what comes out is what
the GPU would run, with the tiles the launcher picks for that GPU.

Per compiled kernel: registers per thread, stack bytes (spills), shared memory, and SASS instruction
counts (cuobjdump, shipped with triton): HGMMA (wgmma), HMMA (mma.sync, the slow path on Hopper), UTCHMMA and
UTCQMMA (tcgen05, sm_100), LDGSTS
(cp.async), UTMALDG (TMA loads), LDG (synchronous global loads), BAR (barriers); plus the synchronous
loads of 2-D tiles left inside loops in the TTGIR (``sync_2d_loads_in_loops``: loads the pipeliner did not
make asynchronous). Needs a process where TRITON_INTERPRET is not set.

``--chunk-steps``: the chunked GEMM path's two row-step kernels (``ops/chunked/row_kernels.py``) instead, launched as
``chunked_forward`` / ``chunked_backward`` launch them on CUDA (fp32 scores of one chunk of the default CUDA
budget, e / w / g in the GEMM operand dtype), each in both variants (forward: row max | fixed max; backward:
natural | base 2), with the widths of their global loads and stores (LDG/STG of 8..128 bits).
"""
import argparse
import collections
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile

import torch

from mhtma_kernels.ops.chunked import gemm as chunked
from mhtma_kernels.ops.chunked import row_kernels as chunked_kernels
from mhtma_kernels.ops.rules import DEFAULT_CHUNK_MB
from mhtma_kernels.ops.triton import device as devices
from mhtma_kernels.ops.triton import launcher as triton_launcher

SASS_OPS = ("HGMMA", "HMMA", "UTCHMMA", "UTCQMMA", "LDGSTS", "UTMALDG", "LDG", "BAR")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cuda_tool(name: str) -> str:
    """Path of a CUDA binary (ptxas, cuobjdump) that ships with triton; FileNotFoundError when absent."""
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"this triton build ships no {name} ({path})")
    return path


#: The emulated GPUs by compute capability: (a typical card, shared memory a block may opt in to (bytes),
#: streaming multiprocessors); CUDA programming guide, compute-capability table.
ARCHS = {
    80: ("NVIDIA A100-SXM4-80GB", 166912, 108),
    86: ("NVIDIA GeForce RTX 3090", 101376, 82),
    89: ("NVIDIA GeForce RTX 4090", 101376, 128),
    90: ("NVIDIA H100 80GB HBM3", 232448, 132),
    100: ("NVIDIA B200", 232448, 148),
    120: ("NVIDIA GeForce RTX 5090", 101376, 170),
}


def emulated_devices() -> dict:
    """{arch: the launcher's device model of that emulated GPU}."""
    return {arch: devices.Device(name, arch, shared, sms) for arch, (name, shared, sms) in ARCHS.items()}


class _Utils:
    """triton.runtime.driver.active.utils of the emulated GPU (what the launcher's device model asks)."""

    def __init__(self, arch: int):
        self.arch = arch

    def get_device_properties(self, device=0):
        _, shared, sms = ARCHS[self.arch]
        return dict(max_shared_mem=shared, multiprocessor_count=sms, max_num_regs=65536, warpSize=32)


class _GpuStub:
    """Stands in for triton's CUDA driver: device 0 of compute capability `arch` (one of ARCHS), stream 0,
    nothing to launch."""

    def __init__(self, arch: int = 90):
        self.arch = arch
        self.utils = _Utils(arch)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.arch, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        raise RuntimeError("the compile report never times a kernel (no GPU)")

    def clear_cache(self, cache):
        pass


@contextlib.contextmanager
def gpu_compiles(arch: int = 90):
    """Inside: every kernel launch compiles for sm_<arch> and does not run; the launcher's device model sees
    that GPU. Yields the list that receives (kernel name, triton CompiledKernel) per launch, in launch order."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    if triton_launcher.interpreting():
        raise RuntimeError("the compile report needs compiled kernels: run it without TRITON_INTERPRET=1")
    compiled, run = [], JITFunction.run

    def warmup_run(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kernel))
        return kernel

    previous = driver._active  # None until triton first asks for its driver (reset_active would create one)
    driver.set_active(_GpuStub(arch))
    JITFunction.run = warmup_run
    devices.forget()  # the device model asks the stub, and forgets it afterwards
    try:
        yield compiled
    finally:
        JITFunction.run = run
        driver.set_active(previous)
        devices.forget()


def _sync_tile_loads(ttgir: str) -> tuple[int, int]:
    """(all, inside scf.for bodies) synchronous loads of 2-D pointer tensors in a TTGIR module."""
    total = inside = depth = 0
    loop_depths = []  # brace depth of each open scf.for body
    for line in ttgir.splitlines():
        if re.search(r"= tt\.load .*: tensor<\d+x\d+x!tt\.ptr", line):
            total += 1
            inside += bool(loop_depths)
        if "scf.for" in line and "{" in line:
            loop_depths.append(depth + 1)
        depth += line.count("{") - line.count("}")
        while loop_depths and depth < loop_depths[-1]:
            loop_depths.pop()
    return total, inside


def _cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        return subprocess.run([cuda_tool("cuobjdump"), flag, file.name], capture_output=True, text=True,
                              check=True).stdout


def sass_counts(sass: str) -> dict:
    """Instructions of a SASS listing counted by family (HGMMA.64x32x16.F32.BF16 counts as HGMMA)."""
    opcodes = collections.Counter(re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, re.M))
    return {op: sum(n for name, n in opcodes.items() if name == op or name.startswith(op + "_")) for op in SASS_OPS}


def summarise(kernel) -> dict:
    """Resources and instruction mix of one triton CompiledKernel (see the module docstring)."""
    cubin = kernel.asm["cubin"]
    usage = re.search(r"REG:(\d+) STACK:(\d+)", _cuobjdump(cubin, "--dump-resource-usage"))
    if usage is None:
        raise RuntimeError("cuobjdump reported no register usage")
    tile_loads, in_loops = _sync_tile_loads(kernel.asm.get("ttgir", ""))
    return dict(regs=int(usage[1]), stack=int(usage[2]), smem=kernel.metadata.shared,
                warps=kernel.metadata.num_warps, stages=kernel.metadata.num_stages,
                **sass_counts(_cuobjdump(cubin, "--dump-sass")),
                sync_2d_loads=tile_loads, sync_2d_loads_in_loops=in_loops)


def _inputs(shape: dict, d: int, dv: int, dtype: torch.dtype):
    """Uninitialised CPU tensors of the launch shape (nothing runs, only strides and alignment matter)."""
    b, h, nq, nk = shape["batch"], shape["heads"], shape["nq"], shape["nk"]
    q, k, v = torch.empty(b, h, nq, d, dtype=dtype), torch.empty(b, h, nk, d, dtype=dtype), torch.empty(b, h, nk, dv,
                                                                                                         dtype=dtype)
    valid = torch.ones(b, nk, dtype=torch.uint8)
    return q, k, v, valid, torch.full((b, h), 0.1)


def family(kernel_name: str) -> str:
    """"fwd" | "delta" | "dkdv" | "dq": which of the launcher's kernels a compiled kernel's name is."""
    for key, family_name in (("dkdv", "dkdv"), ("_dq_", "dq"), ("delta", "delta"), ("forward", "fwd"), ("fwd", "fwd")):
        if key in kernel_name:
            return family_name
    raise ValueError(f"unknown kernel {kernel_name!r}")


def _launch_all(config, shape, d, dv, dtype, forward_only):
    """Run the launcher once: the forward (bounded, the benchmark's case) and unless forward_only the backward."""
    q, k, v, valid, temp = _inputs(shape, d, dv, dtype)
    out, stats = triton_launcher.launch_forward(q, k, v, valid, temp, 1e4, config, bounded=dtype != torch.float16)
    if not forward_only:
        triton_launcher.launch_backward(q, k, v, valid, temp, 1e4, config, out, stats, torch.empty_like(out), True, True, True)


def compile_launched(config, d: int, dv: int, dtype: torch.dtype, shape: dict | None = None,
                     forward_only: bool = False, arch: int = 90) -> list:
    """[(kernel name, CompiledKernel)] of every launch of the forward (and backward) with `config` (None: the
    fixed choice) at `shape` (batch, heads, nq, nk; default 1, 2, 4096, 3844), compiled for sm_<arch>."""
    shape = dict(dict(batch=1, heads=2, nq=4096, nk=3844), **(shape or {}))
    with gpu_compiles(arch) as compiled:
        if config is None:
            config = triton_launcher.choose_config(shape["nq"], shape["nk"], d, dv, dtype, interpret=False)
        _launch_all(config, shape, d, dv, dtype, forward_only)
    return compiled


def compile_for_gpu(d: int, dv: int, dtype: torch.dtype = torch.float16, arch: int = 90,
                    config=None, kernels=triton_launcher.KERNELS) -> dict:
    """Compile the kernels for CUDA sm_<arch> without a GPU exactly as the launcher launches them (Nq 4096,
    Nk 3844), with `config` or the fixed choice for head dims d, dv; fp32 dots as torch's matmul precision
    says now -> {"fwd" | "dkdv" | "dq": triton CompiledKernel} (the forward's first launch: the fixed-max pass
    for bf16/fp32). Needs a process where TRITON_INTERPRET is not set."""
    compiled = compile_launched(config, d, dv, dtype, forward_only=set(kernels) <= {"fwd"}, arch=arch)
    found = {}
    for name, kernel in compiled:
        if family(name) in kernels:
            found.setdefault(family(name), kernel)
    return found


def resource_usage(compiled) -> dict:
    """Registers per thread, stack bytes (register spills land there; 0 = none) and shared memory of a
    kernel from compile_for_gpu, read from its cubin with the cuobjdump Triton ships."""
    figures = summarise(compiled)
    return {"registers": figures["regs"], "stack_bytes": figures["stack"], "shared_bytes": figures["smem"]}


def _configs(d, dv, dtype, shape, candidates: bool, arch: int):
    """(label, KernelConfig, kernel or None): the fixed choice (every kernel reported), then with `candidates`
    every candidate of each kernel with the other kernels at their fixed choice (only that kernel reported),
    as the launcher picks them for sm_<arch>."""
    with gpu_compiles(arch):
        base = triton_launcher.choose_config(shape["nq"], shape["nk"], d, dv, dtype, interpret=False)
        tiles = {name: triton_launcher.candidates(name, d, dv, dtype) for name in triton_launcher.KERNELS}
    yield "default", base, None
    if candidates:
        for name in triton_launcher.KERNELS:
            for tile in tiles[name]:
                config = triton_launcher.KernelConfig(**{n: tile if n == name else base[n] for n in triton_launcher.KERNELS})
                yield f"candidate {tile!r}", config, name


def report(d: int, dv: int | None = None, dtype: torch.dtype = torch.bfloat16, shape: dict | None = None,
           candidates: bool = False, forward_only: bool = False, arch: int = 90):
    """Yield one dict per compiled kernel: arch, d, dtype, kernel, config (default | candidate ...) and the
    figures of `summarise`. shape: batch, heads, nq, nk (default: the benchmark's 16, 2, 4096, 3844)."""
    dv = d if dv is None else dv
    shape = dict(dict(batch=16, heads=2, nq=4096, nk=3844), **(shape or {}))
    name = {v: k for k, v in _DTYPES.items()}[dtype]
    previous = os.environ.get("MHTMA_AUTOTUNE")
    os.environ["MHTMA_AUTOTUNE"] = "0"
    try:
        for label, config, only in _configs(d, dv, dtype, shape, candidates, arch):
            compiled = compile_launched(config, d, dv, dtype, shape, forward_only or only == "fwd", arch)
            launches = collections.Counter()
            for kernel_name, kernel in compiled:
                launches[kernel_name] += 1
                if only is not None and family(kernel_name) != only:
                    continue
                # the bounded forward is two launches: #1 the fixed-max pass, #2 the rest (see ops/triton/forward.py)
                figures = summarise(kernel)
                yield dict(arch=arch, d=d, dv=dv, dtype=name, kernel=kernel_name, launch=launches[kernel_name], config=label,
                           smem_fits=figures["smem"] <= ARCHS[arch][1], **figures)
    finally:
        if previous is None:
            os.environ.pop("MHTMA_AUTOTUNE")
        else:
            os.environ["MHTMA_AUTOTUNE"] = previous


def access_widths(sass: str) -> dict:
    """Global loads and stores of a SASS listing by access width: {"LDG.128": n, "STG.64": n, ...} (bits;
    .U8/.S8 8, .U16/.S16 16, no suffix 32)."""
    widths = collections.Counter()
    for op, suffix in re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?(LDG|STG)\.E((?:\.[A-Z0-9]+)*)", sass, re.M):
        parts = suffix.split(".")
        bits = next((b for b in ("128", "64") if b in parts), None) or next(
            (p[1:] for p in parts if p in ("U8", "S8", "U16", "S16")), "32")
        widths[f"{op}.{bits}"] += 1
    return dict(sorted(widths.items()))


def chunk_step_report(dtype: torch.dtype = torch.bfloat16, shape: dict | None = None, arch: int = 90):
    """Yield one dict per compiled row-step kernel of the chunked path (see the module docstring): kernel,
    variant, rows per chunk, BLOCK_M x BLOCK_N, ALIGN, the figures of `summarise` and `access_widths`.
    shape: batch, heads, nq, nk (default 16, 2, 3844, 3844: a 64x64 map)."""
    shape = dict(dict(batch=16, heads=2, nq=3844, nk=3844), **(shape or {}))
    bh, nq, nk = shape["batch"] * shape["heads"], shape["nq"], shape["nk"]
    budget = DEFAULT_CHUNK_MB["cuda"]
    operand = dtype  # 16-bit operands with fp32 GEMM results (torch.bmm out_dtype), fp32 for fp32 inputs
    for kind, variant, extra in (("forward", "row max", None), ("forward", "fixed max", True),
                                 ("backward", "natural", False), ("backward", "base 2", True)):
        rows = chunked.step_rows(kind, bh, nq, nk, torch.float32, operand, budget)
        s, scale = torch.empty(bh, rows, nk), torch.empty(bh, 1, 1)
        invalid = torch.zeros(bh, 1, nk, dtype=torch.bool)
        with gpu_compiles(arch) as compiled:
            if kind == "forward":
                chunked_kernels.forward_rows(s, scale, invalid, -1e4, scale if extra else None, operand)
            else:
                chunked_kernels.backward_rows(s, torch.empty_like(s), scale, invalid, -1e4, torch.empty(bh, rows, 1),
                                              extra, operand)
        (name, kernel), = compiled
        block_m, block_n, _ = chunked_kernels.row_blocks(bh, rows, nk)
        yield dict(kernel=name, variant=variant, dtype={v: k for k, v in _DTYPES.items()}[dtype], rows=rows,
                   grid=[-(-rows // block_m), bh], block=f"{block_m}x{block_n}", align=chunked_kernels.alignment(nk),
                   **summarise(kernel), **access_widths(_cuobjdump(kernel.asm["cubin"], "--dump-sass")))


_COLUMNS = ("regs", "stack", "smem", "smem_fits", "warps", "stages") + SASS_OPS + ("sync_2d_loads_in_loops",)


def _table_line(row: dict) -> str:
    cells = [str(row["d"]), row["dtype"], row["kernel"].replace("masked_attention_", "") + f" #{row['launch']}"]
    cells += [str(row[c]) for c in _COLUMNS] + [row["config"]]
    return "| " + " | ".join(cells) + " |"


def _print_chunk_steps(dtype: torch.dtype, shape: dict, as_json: bool, arch: int) -> int:
    columns = ("kernel", "variant", "dtype", "rows", "grid", "block", "align", "regs", "stack", "smem", "warps",
               "LDG", "BAR")
    if not as_json:
        print("| " + " | ".join(columns) + " | global accesses (bits) |")
        print("|" + "---|" * (len(columns) + 1))
    try:
        for row in chunk_step_report(dtype, shape, arch):
            widths = ", ".join(f"{k} {v}" for k, v in row.items() if k.startswith(("LDG.", "STG.")))
            print(json.dumps(row) if as_json else "| " + " | ".join(str(row[c]) for c in columns) + f" | {widths} |",
                  flush=True)
    except (RuntimeError, FileNotFoundError) as error:
        print(f"compile_report: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_report", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, choices=sorted(ARCHS), default=90,
                        help="the emulated GPU's compute capability (80 A100, 86 RTX 3090, 89 RTX 4090, 90 H100, "
                             "100 B200, 120 RTX 5090)")
    parser.add_argument("--d", default="288,432,576,864", help="head dims D (= Dv), comma-separated")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    parser.add_argument("--candidates", action="store_true", help="every autotune candidate too (slow)")
    parser.add_argument("--forward-only", action="store_true", help="compile the forward kernel only")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.add_argument("--fp32-precision", choices=("tf32", "ieee"), default="tf32",
                        help="fp32 dots as under torch.set_float32_matmul_precision('high') (tf32) or 'highest'")
    parser.add_argument("--chunk-steps", action="store_true",
                        help="the chunked path's row-step kernels (default shape 16 x 2, Nq = Nk = 3844) instead")
    for name, default in (("batch", 16), ("heads", 2), ("nq", None), ("nk", 3844)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args(argv)
    nq = args.nq if args.nq is not None else (3844 if args.chunk_steps else 4096)
    shape = dict(batch=args.batch, heads=args.heads, nq=nq, nk=args.nk)
    torch.backends.cuda.matmul.allow_tf32 = args.fp32_precision == "tf32"  # what triton_launcher.dot_precision reads
    if triton_launcher.interpreting():
        parser.error("the compile report needs compiled kernels: run it without TRITON_INTERPRET=1")
    if args.chunk_steps:
        return _print_chunk_steps(_DTYPES[args.dtype], shape, args.json, args.arch)
    if not args.json:
        print("| D | dtype | kernel | " + " | ".join(_COLUMNS) + " | config |")
        print("|" + "---|" * (len(_COLUMNS) + 4))
    try:
        for d in (int(x) for x in args.d.split(",")):
            for row in report(d, d, _DTYPES[args.dtype], shape, args.candidates, args.forward_only, args.arch):
                print(json.dumps(row) if args.json else _table_line(row), flush=True)
    except (RuntimeError, FileNotFoundError) as error:  # interpreter mode, no cuobjdump: one line, exit 2
        print(f"compile_report: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
