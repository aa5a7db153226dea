"""What ``python -m benchmarks.gpu_check`` measures: shapes, inputs, providers and one function per measurement.

Every ``*_plan(setup)`` returns a list of ``(record, thunk)`` pairs: ``record`` is the flat description of
one measurement (level, provider, mode, dtype, batch, d, ...), ``thunk()`` runs it and returns the measured
fields (``ms``, ``peak_mb``, errors, ...). The driver (:mod:`benchmarks.gpu_check`) runs the thunks under
a time budget and records failures instead of stopping. The ``correct`` and ``op`` parts are lists of
:class:`OpRow` (:func:`correct_rows`, :func:`op_rows`): adding a row is one ``OpRow`` there (see
benchmarks/README.md). Providers, builders, inputs and timing are the shared harness (:mod:`benchmarks.providers`,
:mod:`benchmarks.builders`, :mod:`benchmarks.cases`, :mod:`benchmarks.timing`).

Shapes (GPU; ``--smoke`` shrinks every one of them, see :func:`make_setup`):

- warm-up: the triton op once per (dtype, precision, D) used below, in parallel worker processes
  (``python -m benchmarks.gpu_check_cases --warm ...``), to fill Triton's disk cache.
- op: B=16, H=2, 64x64 feature map with 3x3 patches -> Nq=4096, Nk=62*62=3844; D = Dv in 288, 432, 576,
  864; key_valid = no hole pixel in the key's 3x3 window of a centred square hole (side 32) AND a
  seeded 10 % of keys invalid at random; temperature uniform in [0.05, 1]; lambda_m = 1e4.
- correctness: the same shapes, run on the whole batch; image 1 of the batch has no valid key at all.
  The float64 oracle (``masked_temperature_attention_reference``) runs on images 0 and 1 only (all
  query rows; the gradients of image b depend on image b alone, so the slice is exact), and errors are
  normwise relative ``|a - e| / |e|`` per image (``|a|`` where e is exactly 0): ``case="mixed"`` is
  image 0, ``"all_invalid"`` image 1.
- the chunked GEMM path and the measured choices (the CPU and GPU speed targets), op and correctness rows at every D:
  ``chunked`` (backend="auto" restricted to the chunked GEMM path by MHTMA_AUTO_CANDIDATES; on CUDA
  also what backend="torch" runs), ``auto`` (the measured choice; the record's ``auto_chosen`` and
  ``auto_candidates_ms`` say what it chose and why), ``triton-chunked-bwd`` (the fused forward with the
  chunked GEMM backward, MHTMA_TRITON_BACKWARD=chunked); the ``triton`` fwdbwd rows record which
  backward the op chose (``triton_backward``, ``triton_backward_ms``).
- layer: ``MaskedTemperatureAttention(128, heads=2, backend="triton")`` vs ``ContextualAttention`` at
  B=16, 64x64, fp32 and bf16 autocast.
- model: ``InpaintGenerator(base_channels=24, attention=...)`` at 256 px, batch 1 and 16, fp32 and bf16
  autocast, inference under ``torch.no_grad()``; MHTMA uses backend="triton".
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from mhtma_kernels import masked_temperature_attention
from mhtma_kernels.ops import dispatch_report

from .builders import make_generator, make_layer
from .cases import DTYPES, LAMBDA_M, op_tensors, square_hole
from .oracle import GRAD_NAMES, oracle, run_with_grads
from .providers import FLEX_KERNEL_OPTIONS, flex_padded_dim, op_provider
from .timing import autocast, finite, first_call, matmul_precision, timed

ROOT = Path(__file__).resolve().parent.parent
RANDOM_INVALID = 0.10


@dataclass(frozen=True)
class Setup:
    """Shapes and timing knobs of one run (GPU defaults or the tiny ``--smoke`` ones)."""

    device: str
    smoke: bool
    batch: int = 16
    heads: int = 2
    size: int = 64
    correct_size: int = 64
    dims: tuple = (576, 432, 288, 864)  # order = priority under the time budget
    fp32_dim: int = 576
    layer_channels: int = 128
    model_size: int = 256
    model_base: int = 24
    model_batches: tuple = (1, 16)
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    cpu_reps: int = 2
    compile_model: bool = False

    @property
    def nq(self) -> int:
        return self.size * self.size

    @property
    def nk(self) -> int:
        return (self.size - 2) ** 2


def make_setup(smoke: bool, compile_model: bool = False) -> Setup:
    if not smoke:
        return Setup(device="cuda", smoke=False, compile_model=compile_model)
    # The interpreter's cost grows with the number of tiles: one 64-row tile per map of side 8. For
    # correctness, side 12: the smallest map whose centred hole (side 6) leaves hole-free 3x3 key windows.
    return Setup(device="cpu", smoke=True, batch=2, size=8, correct_size=12, dims=(18,), fp32_dim=18,
                 layer_channels=8,
                 model_size=16, model_base=4, model_batches=(2,), cpu_reps=1, compile_model=compile_model)


# ------------------------------------------------------------------------------------------- helpers


def measure(call, setup: Setup) -> dict:
    """:func:`benchmarks.timing.timed` with the setup's timer settings."""
    return timed(call, setup.device, cpu_reps=setup.cpu_reps, warmup_ms=setup.warmup_ms, rep_ms=setup.rep_ms)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Normwise relative error |a - e| / |e| (float64); |a| itself where e is exactly zero (dq, dk and
    dtemperature of an image without valid keys: its scores do not reach the output)."""
    e = expected.detach().double()
    scale = e.norm()
    return float((actual.detach().double() - e).norm() / (scale if scale > 0 else 1.0))


# -------------------------------------------------------------------------------------------- inputs


def op_inputs(setup: Setup, d: int, dtype: str, seed: int = 0) -> dict:
    """q, k, v (``dtype``), key_valid (outside the hole AND not among a seeded 10 % of keys), temperature
    (fp32) on the setup's device."""
    return op_tensors(setup.batch, setup.heads, setup.size, d, dtype, setup.device, seed, RANDOM_INVALID)


def poisoned_copy(x: torch.Tensor) -> torch.Tensor:
    """``x`` copied to the start of a buffer whose tail is NaN: a kernel reading past the end sees NaN."""
    flat = torch.full((x.numel() + 4096,), float("nan"), dtype=x.dtype, device=x.device)
    flat[:x.numel()] = x.flatten()
    return flat[:x.numel()].view(x.shape)


def poison_allocator(device: str, mbytes: int = 2048) -> str:
    """Fill (then free) a large CUDA block with NaN: outputs from ``torch.empty`` that a kernel forgets to
    write then read NaN instead of zeros. Returns what was poisoned (for the record)."""
    if device != "cuda":
        return "inputs"
    try:
        block = torch.full((mbytes * 2**20 // 4,), float("nan"), device=device)
    except torch.cuda.OutOfMemoryError:
        return "inputs"
    del block
    return "inputs+allocator"


# ------------------------------------------------------------------------------------------ op rows


@dataclass(frozen=True)
class OpRow:
    """One op measurement of the ``correct`` or ``op`` part.

    ``provider`` names the row in the record and the table; its function is ``fn`` when given, else
    ``benchmarks.providers.op_provider(provider, ...)`` (flex: temperature folded into q, small tiles on CUDA).
    ``fn(q, k, v, key_valid, temperature, lambda_m) -> [B, H, Nq, Dv]`` takes the raw inputs; it may raise
    :class:`~benchmarks.providers.Unavailable` (the row is then recorded as skipped with the reason).
    ``fields`` are extra record fields (what distinguishes the row, e.g. ``{"variant": "v3"}``).
    """

    provider: str
    mode: str
    dtype: str
    d: int
    precision: str | None = None
    fn: Callable | None = field(default=None, compare=False)
    fields: dict = field(default_factory=dict, compare=False)

    def function(self, device: str):
        if self.fn is not None:
            return self.fn
        if self.provider in DISPATCH_ROWS:
            return _dispatch_provider(DISPATCH_ROWS[self.provider][0], device, self.mode)
        if self.provider == "flex":
            options = FLEX_KERNEL_OPTIONS if device == "cuda" else None
            return op_provider("flex", device, self.mode, fold_temperature=True, kernel_options=options)
        return op_provider(self.provider, device, self.mode)

    def record(self, level: str, setup: Setup) -> dict:
        return dict(level=level, provider=self.provider, mode=self.mode, dtype=self.dtype, precision=self.precision,
                    batch=setup.batch, d=self.d, nq=setup.nq, nk=setup.nk, heads=setup.heads, **self.fields)


#: Rows of the chunked GEMM path and of the measured choices: provider -> (op backend, environment).
DISPATCH_ROWS = {
    "chunked": ("auto", {"MHTMA_AUTO_CANDIDATES": "chunked"}),
    "auto": ("auto", {}),
    "triton-chunked-bwd": ("triton", {"MHTMA_TRITON_BACKWARD": "chunked"}),
}


def _dispatch_provider(backend: str, device: str, mode: str):
    if backend == "triton":
        return op_provider("triton", device, mode)

    def run(q, k, v, key_valid, temperature, lambda_m):
        return masked_temperature_attention(q, k, v, key_valid, temperature, lambda_m=lambda_m, backend=backend)

    return run


@contextlib.contextmanager
def row_environment(row):
    """The row's environment variables (DISPATCH_ROWS) set while it runs, restored afterwards."""
    env = DISPATCH_ROWS.get(row.provider, (None, {}))[1]
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def dispatch_choices(row) -> dict:
    """What the measured choices decided for this row's shape: ``auto_chosen`` / ``auto_candidates_ms``
    (``auto`` rows), ``triton_backward`` / ``triton_backward_ms`` (``triton`` fwdbwd rows)."""
    dtype = str(DTYPES[row.dtype]).replace("torch.", "")
    found = {}
    for decision in dispatch_report():
        key = decision["key"]
        if decision["dtype"] != dtype or len(key) < 6 or key[5] != row.d:
            continue
        if decision["op"] == "auto backend" and row.provider == "auto" and key[-1] == (row.mode == "fwdbwd"):
            found.update(auto_chosen=decision["chosen"], auto_candidates_ms=decision["candidates"])
        if decision["op"] == "triton backward" and row.provider == "triton" and row.mode == "fwdbwd":
            found.update(triton_backward=decision["chosen"], triton_backward_ms=decision["candidates"])
    return found


# --------------------------------------------------------------------------------------- correctness


def _errors(out, grads, ref_out, ref_grads, image: int) -> dict:
    errs = {"err_out": rel_err(out[image], ref_out[image])}
    for name in GRAD_NAMES:
        key = "err_dtemperature" if name == "temperature" else f"err_d{name}"
        errs[key] = rel_err(grads[name][image], ref_grads[name][image])
    return errs


def correct_case(setup: Setup, row: OpRow) -> list[dict]:
    """Forward + backward on the whole batch (image 1 all-invalid, inputs poisoned) vs the float64
    oracle on images 0 and 1 -> two result dicts (case "mixed", case "all_invalid")."""
    inputs = op_inputs(setup, row.d, row.dtype, seed=1)
    inputs["key_valid"][1] = False
    inputs = {n: (poisoned_copy(x) if x.is_floating_point() else x) for n, x in inputs.items()}
    dout = torch.randn(inputs["q"].shape[:3] + (row.d,), generator=torch.Generator().manual_seed(2))
    dout = dout.to(setup.device, DTYPES[row.dtype])
    fn = row.function(setup.device)
    with matmul_precision(row.precision), row_environment(row):
        poisoned = poison_allocator(setup.device)
        first, (out, grads) = first_call(partial(run_with_grads, fn, inputs, dout), setup.device)
    ok = finite((out, *grads.values()))
    ref_out, ref_grads = oracle({n: x[:2] for n, x in inputs.items()}, dout[:2])  # images 0 and 1
    common = {"finite": ok, "first_call_ms": first, "poisoned": poisoned}
    valid = inputs["key_valid"].sum(dim=1).tolist()
    return [dict(common, case=case, valid_keys=int(valid[image]), **_errors(out, grads, ref_out, ref_grads, image))
            for image, case in ((0, "mixed"), (1, "all_invalid"))]


def correct_rows(setup: Setup) -> list[OpRow]:
    """triton and sdpa, forward + backward: bf16 at every D, fp16 and fp32 (IEEE, TF32) at ``fp32_dim``;
    then the chunked GEMM path and the triton op with the chunked backward, bf16 at every D."""
    shapes = [("bf16", None, d) for d in setup.dims]
    shapes += [("fp16", None, setup.fp32_dim), ("fp32", "highest", setup.fp32_dim), ("fp32", "high", setup.fp32_dim)]
    rows = [OpRow(provider, "fwdbwd", dtype, d, precision)
            for dtype, precision, d in shapes for provider in ("triton", "sdpa")]
    return rows + [OpRow(p, "fwdbwd", "bf16", d) for d in setup.dims for p in ("chunked", "triton-chunked-bwd")]


def correct_plan(setup: Setup) -> list:
    setup = dataclasses.replace(setup, size=setup.correct_size)
    oracle = "float64 reference on images 0 (mixed) and 1 (all keys invalid), all rows"
    return [(dict(row.record("correct", setup), oracle=oracle), partial(correct_case, setup, row))
            for row in correct_rows(setup)]


# ------------------------------------------------------------------------------------------------ op


def op_flops(setup: Setup, d: int, mode: str) -> float:
    """4*B*H*Nq*Nk*D forward; 3.5x that forward + backward."""
    fwd = 4.0 * setup.batch * setup.heads * setup.nq * setup.nk * d
    return fwd * (3.5 if mode == "fwdbwd" else 1.0)


def op_case(setup: Setup, row: OpRow) -> dict:
    inputs = op_inputs(setup, row.d, row.dtype)
    fn = row.function(setup.device)
    if row.mode == "fwd":
        def call():
            with torch.no_grad():
                return fn(**inputs, lambda_m=LAMBDA_M)
    else:
        for name in GRAD_NAMES:
            inputs[name].requires_grad_(True)
        dout = torch.randn(inputs["q"].shape[:3] + (row.d,), generator=torch.Generator().manual_seed(3))
        dout = dout.to(setup.device, DTYPES[row.dtype])

        def call():
            out = fn(**inputs, lambda_m=LAMBDA_M)
            return torch.autograd.grad(out, [inputs[n] for n in GRAD_NAMES], dout)
    with matmul_precision(row.precision), row_environment(row):
        result = measure(call, setup)
    result["tflops"] = op_flops(setup, row.d, row.mode) / (result["ms"] * 1e-3) / 1e12
    result.update(dispatch_choices(row))
    if row.provider == "triton":  # which forward tile the autotuner ran (None: fixed choice, no tuning)
        result["autotuned_fwd"] = autotuned_choice("fwd")
    return result


def autotuned_choice(kernel: str) -> str | None:
    """The tile the launcher's autotuner ran last for `kernel` on the current GPU (its Config as text), None
    if it has not run."""
    from mhtma_kernels.ops.triton import device as devices
    from mhtma_kernels.ops.triton import launcher

    tuner = launcher._AUTOTUNED.get((kernel, devices.current().kind))
    best = getattr(tuner, "best_config", None)
    return None if best is None else str(best)


def _with_forward_tile(tile):
    """The triton op with every forward launch at `tile` (benchmarks.forward_tile); the backward as usual."""
    from .forward_tile import forward_tile

    def run(q, k, v, key_valid, temperature, lambda_m):
        run_op = op_provider("triton", q.device.type, "fwdbwd")  # raises Unavailable where triton cannot run
        with forward_tile(tile):
            return run_op(q, k, v, key_valid, temperature, lambda_m)

    return run


def forward_version_rows(setup: Setup) -> list[OpRow]:
    """The forward's autotune candidates side by side, bf16, every D (so that the fixed order of versions can be checked): per version (v3 =
    ForwardTile, v2 = TileConfig) its first tile as "triton-v3" / "triton-v2" (fwd and fwd+bwd), on a GPU
    its other tiles as "triton-v3-alt" / "triton-v2-alt" (fwd; the table shows the first, the JSON all).
    Each record names its tile (``forward_tile``); the "triton" rows record the autotuner's pick."""
    try:
        from mhtma_kernels.ops.triton import launcher as triton_launcher

        per_d = {d: triton_launcher.candidates("fwd", d, d, torch.bfloat16) for d in setup.dims}
    except (ImportError, AttributeError, TypeError):  # no triton: the "triton" rows say why
        return []
    rows = []
    for d, tiles in per_d.items():
        for version, kind in (("v3", triton_launcher.ForwardTile), ("v2", triton_launcher.TileConfig)):
            chosen = [t for t in tiles if isinstance(t, kind)][:None if setup.device == "cuda" else 1]
            for rank, tile in enumerate(chosen):
                label = f"triton-{version}" + ("-alt" if rank else "")
                fields = {"forward_version": version, "forward_tile": repr(tile)}
                rows += [OpRow(label, m, "bf16", d, fn=_with_forward_tile(tile), fields=fields)
                         for m in (("fwd", "fwdbwd") if rank == 0 else ("fwd",))]
    return rows


def op_rows(setup: Setup) -> list[OpRow]:
    """bf16 triton / sdpa / reference for every D, the forward's v3 and v2 tiles, then fp32 (IEEE and TF32),
    then flex (slow to compile). The order is the priority under the part's time budget: append new rows
    where they belong."""
    rows = [OpRow(p, m, "bf16", d) for d in setup.dims for m in ("fwd", "fwdbwd") for p in ("triton", "sdpa",
                                                                                          "reference")]
    rows += forward_version_rows(setup)
    rows += [OpRow(p, m, "bf16", d) for d in setup.dims for m in ("fwd", "fwdbwd") for p in ("chunked", "auto")]
    rows += [OpRow("triton-chunked-bwd", "fwdbwd", "bf16", d) for d in setup.dims]
    rows += [OpRow(p, m, "fp32", setup.fp32_dim, prec) for m in ("fwd", "fwdbwd")
             for p, prec in (("triton", "highest"), ("triton", "high"), ("sdpa", "highest"), ("sdpa", "high"))]
    flex = {"flex_kernel_options": FLEX_KERNEL_OPTIONS if setup.device == "cuda" else None}
    rows += [OpRow("flex", m, "bf16", d, fields=dict(flex, flex_padded_d=flex_padded_dim(d)))
             for d in setup.dims for m in ("fwd", "fwdbwd")]
    return rows


def op_plan(setup: Setup) -> list:
    return [(row.record("op", setup), partial(op_case, setup, row)) for row in op_rows(setup)]


# --------------------------------------------------------------------------------------------- layer


def layer_case(setup: Setup, provider: str, mode: str, dtype: str) -> dict:
    layer = make_layer(provider, setup.layer_channels, setup.heads, setup.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(setup.batch, setup.layer_channels, setup.size, setup.size, generator=gen).to(setup.device)
    mask = square_hole(setup.batch, setup.size, setup.device)
    params = [p for p in layer.parameters() if p.requires_grad]
    if mode == "fwdbwd":
        x.requires_grad_(True)

    def call():
        with autocast(setup.device, dtype), torch.set_grad_enabled(mode == "fwdbwd"):
            out = layer(x, mask)
        if mode == "fwd":
            return out
        return torch.autograd.grad(out, [x, *params], torch.ones_like(out))

    return measure(call, setup)


def layer_plan(setup: Setup) -> list:
    plan = []
    for dtype in ("bf16", "fp32"):
        for mode in ("fwd", "fwdbwd"):
            for provider in ("mhtma-triton", "contextual"):
                record = dict(level="layer", provider=provider, mode=mode, dtype=dtype,
                              autocast=dtype != "fp32", batch=setup.batch, d=setup.layer_channels,
                              size=setup.size, heads=setup.heads if provider == "mhtma-triton" else None)
                plan.append((record, partial(layer_case, setup, provider, mode, dtype)))
    return plan


# --------------------------------------------------------------------------------------------- model


def graph_breaks(generator, image, mask, setup: Setup, dtype: str) -> int:
    """Graph breaks torch.compile meets in the generator (torch._dynamo.explain; 0 = one graph, the op inside)."""
    torch._dynamo.reset()
    with torch.no_grad(), autocast(setup.device, dtype):
        explanation = torch._dynamo.explain(generator)(image, mask)
    torch._dynamo.reset()
    return int(explanation.graph_break_count)


def model_case(setup: Setup, attention: str, dtype: str, batch: int, compiled: bool) -> dict:
    generator = make_generator(attention, setup.model_base, setup.device, backend="triton").eval()
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(batch, 3, setup.model_size, setup.model_size, generator=gen) * 2 - 1).to(setup.device)
    mask = square_hole(batch, setup.model_size, setup.device)
    breaks = graph_breaks(generator, image, mask, setup, dtype) if compiled else None
    if compiled:
        generator = torch.compile(generator)

    def call():
        with torch.no_grad(), autocast(setup.device, dtype):
            return generator(image, mask)

    result = measure(call, setup)
    if compiled:
        result["graph_breaks"] = breaks
    result["ms_per_image"] = result["ms"] / batch
    return result


def model_plan(setup: Setup) -> list:
    rows = [(a, dt, b, False) for b in reversed(setup.model_batches) for dt in ("bf16", "fp32")
            for a in ("mhtma", "contextual", "none")]
    if setup.compile_model:
        rows += [("mhtma", dt, max(setup.model_batches), True) for dt in ("bf16", "fp32")]
    plan = []
    for attention, dtype, batch, compiled in rows:
        record = dict(level="model", provider=attention + ("+compile" if compiled else ""), mode="fwd",
                      dtype=dtype, autocast=dtype != "fp32", batch=batch, d=setup.model_base,
                      size=setup.model_size, compiled=compiled)
        plan.append((record, partial(model_case, setup, attention, dtype, batch, compiled)))
    return plan


# --------------------------------------------------------------------------------------------- warm-up


def warm_combos(setup: Setup) -> list[tuple]:
    """(dtype, precision, d) of every triton shape the later parts run at B=16, 64x64: each is one
    autotuning (several kernel compilations). The model's attention has D = 9 * 4 * base / heads."""
    combos = [("bf16", None, d) for d in setup.dims]
    combos += [("fp16", None, setup.fp32_dim), ("fp32", "highest", setup.fp32_dim), ("fp32", "high", setup.fp32_dim)]
    combos.append(("fp32", "highest", 9 * 4 * setup.model_base // setup.heads))
    return combos[:1] if setup.smoke else list(dict.fromkeys(combos))


def warm_case(setup: Setup, dtype: str, precision: str | None, d: int) -> dict:
    """One triton forward + backward at the op shape (what a warm-up worker runs)."""
    inputs = op_inputs(setup, d, dtype)
    leaves = [inputs[n].requires_grad_(True) for n in GRAD_NAMES]
    fn = op_provider("triton", setup.device, "fwdbwd")

    def call():
        return torch.autograd.grad(fn(**inputs, lambda_m=LAMBDA_M), leaves, torch.ones_like(inputs["q"]))

    with matmul_precision(precision):
        first, result = first_call(call, setup.device)
    return {"first_call_ms": first, "finite": finite(result)}


def _worker_command(setup: Setup, combo: tuple) -> list[str]:
    dtype, precision, d = combo
    return [sys.executable, "-m", "benchmarks.gpu_check_cases", "--warm", dtype, str(precision), str(d)] \
        + (["--smoke"] if setup.smoke else [])


def _read(file) -> str:
    file.seek(0)
    return file.read()


def _worker_result(proc: subprocess.Popen, combo: tuple, seconds: float) -> dict:
    out, err = _read(proc.stdout_file), _read(proc.stderr_file)
    dtype, precision, d = combo
    base = {"dtype": dtype, "precision": precision, "d": d, "worker_seconds": round(seconds, 2)}
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return dict(base, status="failed", error=f"worker rc {proc.returncode}: {err.strip()[-600:]}")
    return dict(base, **json.loads(lines[-1]))


def warm_all(setup: Setup) -> list[dict]:
    """Run :func:`warm_case` for every combo in parallel worker processes (``TRITON_CACHE_AUTOTUNING=0``:
    only compiled kernels land in Triton's disk cache, not tuning choices made on a shared GPU); the later
    parts then load the kernels instead of compiling them one after the other. Workers still running when
    this is interrupted (time cap) are killed."""
    env = dict(os.environ, TRITON_CACHE_AUTOTUNING="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    start, procs = time.monotonic(), {}
    for combo in warm_combos(setup):
        # Files, not pipes: a worker that writes a lot must not block on a pipe nobody reads yet.
        stdout, stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(_worker_command(setup, combo), cwd=ROOT, env=env, text=True, stdout=stdout,
                                stderr=stderr)
        proc.stdout_file, proc.stderr_file = stdout, stderr
        procs[combo] = proc
    results = []
    try:
        for combo, proc in procs.items():
            proc.wait()
            results.append(_worker_result(proc, combo, time.monotonic() - start))
        return results
    except BaseException as stop:  # the time cap: keep what finished, say what was stopped
        stopped = [dict(dtype=c[0], precision=c[1], d=c[2], status="failed",
                        error=f"stopped ({type(stop).__name__}: {stop}) after {time.monotonic() - start:.0f} s")
                   for c in list(procs)[len(results):]]
        stop.partial_results = results + stopped
        raise
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout_file.close()
            proc.stderr_file.close()


def warm_plan(setup: Setup) -> list:
    record = dict(level="warmup", provider="triton", mode="fwdbwd", dtype=None, batch=setup.batch, d=None,
                  nq=setup.nq, nk=setup.nk, heads=setup.heads, workers=len(warm_combos(setup)))
    return [(record, partial(warm_all, setup))]


PLANS = {"warmup": warm_plan, "correct": correct_plan, "op": op_plan, "layer": layer_plan, "model": model_plan}


def _warm_worker(argv: list[str]) -> int:
    """``python -m benchmarks.gpu_check_cases --warm DTYPE PRECISION D [--smoke]``: one JSON line."""
    dtype, precision, d = argv[1], None if argv[2] == "None" else argv[2], int(argv[3])
    smoke = "--smoke" in argv
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    print(json.dumps(warm_case(make_setup(smoke), dtype, precision, d)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_warm_worker(sys.argv[1:]))
