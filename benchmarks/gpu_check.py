"""One-command GPU check of mhtma: correctness vs float64, op / layer / model timings, in about 5 minutes.

    PYTHONPATH=. python -m benchmarks.gpu_check                 # on one CUDA GPU
    PYTHONPATH=. python -m benchmarks.gpu_check --smoke --out /tmp/x   # CPU, tiny shapes, TRITON_INTERPRET=1

Parts, in this order (``--only warmup,correct,op,layer,model`` picks some); what each measures is in
:mod:`benchmarks.gpu_check_cases`:

- ``warmup``   one worker process per triton shape and dtype runs the op once, in parallel, so that the
               kernels' compilations (autotuning: several per shape) fill Triton's disk cache side by side
- ``correct``  normwise relative error vs the float64 oracle: out, dq, dk, dv, dtemperature (triton, sdpa)
- ``op``       median ms, TFLOPS, peak MB of triton / sdpa / reference / flex, fwd and fwdbwd
- ``layer``    MaskedTemperatureAttention (triton) vs the for-loop ContextualAttention
- ``model``    InpaintGenerator inference at 256 px per attention variant (``--compile`` adds torch.compile)

Robustness: every measurement runs under a time cap (SIGALRM) inside its part's share of ``--budget``;
an exception or a timeout becomes a record with ``status`` "failed" (or "skipped" when the provider
cannot run or the part's time is spent) and ``error``, and the run goes on. The JSON is rewritten after
every record, so a killed run keeps what it measured; SIGTERM / Ctrl-C print the table so far.

Output: one compact table on stdout (last), and ``<out>/gpu-check-<GPU name>.json`` (``-smoke`` appended
with ``--smoke``): a list of flat records. Record 0 is the header (``level="header"``: gpu, torch, triton,
cuda, python versions, start time, argv, budget). Every other record has ``level`` ("warmup" | "correct" |
"op" | "layer" | "model"), ``provider``, ``mode`` ("fwd" | "fwdbwd"), ``dtype`` ("bf16" | "fp16" | "fp32"),
``precision`` (fp32 matmul precision "highest" = IEEE / "high" = TF32, else null), ``batch``, ``d`` (head
dim; channels for the layer; base width for the model), ``ms`` (median, whole batch), ``peak_mb`` (CUDA
allocator peak above what was allocated before the call; null on CPU), ``first_call_ms`` (includes
compilation / autotuning if it is the process's first call of that shape), ``timer``, ``status``,
``error``, ``seconds`` (wall time of the measurement), and per level: ``tflops`` (op: 4*B*H*Nq*Nk*D
forward, 3.5x forward+backward), ``err_out``, ``err_dq``, ``err_dk``, ``err_dv``, ``err_dtemperature``,
``case``, ``finite`` (correct), ``ms_per_image`` and, with --compile, ``graph_breaks`` (model).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import signal
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

PARTS = ("warmup", "correct", "op", "layer", "model")
PART_SHARES = {"warmup": 80, "correct": 40, "op": 100, "layer": 22, "model": 38}  # s of the default 280-s budget
GPU_BUDGET_S, SMOKE_BUDGET_S = 280.0, 100.0
MIN_START_S = 1.0  # a measurement needs at least this much of its part's time left to start
REQUIRED = ("level", "provider", "mode", "dtype", "batch", "d", "ms", "peak_mb")
RESULTS = Path(__file__).resolve().parent / "results"


class MeasureTimeout(BaseException):
    """A measurement ran past its cap (a BaseException so that library code's ``except Exception`` lets it
    through)."""


class Terminated(BaseException):
    """SIGTERM: stop measuring, print what there is."""


@contextlib.contextmanager
def time_cap(seconds: float):
    """Raise :class:`MeasureTimeout` in the main thread after ``seconds`` (Unix SIGALRM)."""
    def expire(signum, frame):
        raise MeasureTimeout(f"exceeded its cap of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _terminate(signum, frame):
    raise Terminated(f"signal {signum}")


# ------------------------------------------------------------------------------------------ records


class Recorder:
    """The list of records; rewritten to ``path`` (atomically) after every record."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.records = [header]
        self.write()

    def add(self, record: dict) -> None:
        self.records.append(record)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.records, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)

    @property
    def measurements(self) -> list[dict]:
        return self.records[1:]


def gpu_name(smoke: bool) -> str:
    import torch

    if not smoke and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu-{platform.machine() or 'unknown'}"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "unknown"


def device_model(cuda: bool) -> dict | None:
    """What the triton launcher sizes its tiles for on this GPU (its device model and tile family), None
    without a GPU or triton: the forward rows time that family's candidates."""
    if not cuda:
        return None
    try:
        from mhtma_kernels.ops.triton import device, tile_table
    except ImportError:
        return None
    gpu = device.current()
    return {"name": gpu.name, "arch": gpu.arch, "shared_bytes": gpu.shared_bytes, "sms": gpu.sms,
            "tile_family": tile_table.family(gpu.arch)}


def header_record(args, name: str) -> dict:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available() and not args.smoke
    return {
        "level": "header", "gpu": name, "torch": torch.__version__, "triton": triton_version,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
        "device_model": device_model(cuda),
        "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv[1:],
        "smoke": args.smoke, "budget_s": args.budget, "parts": args.only,
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
        "triton_cache_autotuning": os.environ.get("TRITON_CACHE_AUTOTUNING"),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


# ------------------------------------------------------------------------------------------ running


def _base(record: dict) -> dict:
    return dict({key: None for key in REQUIRED}, **record, status="ok", error=None)


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {str(error).strip()}"
    return text[:2000]


def _short(text: str | None, n: int) -> str:
    """One line of at most ``n`` characters (errors span lines)."""
    return " ".join((text or "").split())[:n]


def run_one(recorder: Recorder, record: dict, thunk, deadline: float, cap_s: float, device: str) -> list[dict]:
    """Run one measurement under its cap; record it (also when it fails) and return the new records."""
    from .providers import Unavailable
    from .timing import release_memory

    base, left, start = _base(record), deadline - time.monotonic(), time.monotonic()
    if left < MIN_START_S:
        results = [{"status": "skipped", "error": "time budget of this part spent"}]
    else:
        try:
            with time_cap(min(left, cap_s)):
                result = thunk()
            results = result if isinstance(result, list) else [result]
        except Unavailable as error:
            results = [{"status": "skipped", "error": _error_text(error)}]
        except (Exception, MeasureTimeout) as error:  # noqa: BLE001 - recorded, the run goes on
            traceback.print_exc(limit=3, file=sys.stderr)
            # a thunk may attach what it finished before it was stopped (the warm-up's workers)
            results = getattr(error, "partial_results", None) or [{"status": "failed", "error": _error_text(error)}]
        finally:
            release_memory(device)
    added = [dict(base, **r, seconds=round(time.monotonic() - start, 2)) for r in results]
    for rec in added:
        recorder.add(rec)
        print(progress_line(rec, time.monotonic() - T0), flush=True)
    return added


def run_part(recorder: Recorder, part: str, plan: list, deadline: float, cap_s: float, device: str) -> None:
    start = time.monotonic()
    print(f"== part {part}: {len(plan)} measurements, {deadline - start:.0f} s budget", flush=True)
    cap_s = math.inf if part == "warmup" else cap_s  # one measurement: the whole part
    for record, thunk in plan:
        run_one(recorder, record, thunk, deadline, cap_s, device)
    done = [r for r in recorder.measurements if r["level"] == part]
    counts = {s: sum(r["status"] == s for r in done) for s in ("ok", "failed", "skipped")}
    print(f"== part {part} done in {time.monotonic() - start:.0f} s: {counts}", flush=True)


def deadlines(parts: list[str], budget: float, start: float) -> dict:
    """Cumulative schedule: part i must end by start + budget * (shares of parts 0..i) / (all shares);
    time a part leaves unused goes to the next."""
    total = sum(PART_SHARES[p] for p in parts)
    out, acc = {}, 0.0
    for part in parts:
        acc += PART_SHARES[part]
        out[part] = start + budget * acc / total
    return out


# ------------------------------------------------------------------------------------------- output


def _f(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def progress_line(r: dict, elapsed: float) -> str:
    what = f"[{elapsed:6.1f}s] {r['level']} {r['provider']} {r['mode']} {r['dtype']}" \
           f"{'/' + r['precision'] if r.get('precision') else ''} B={r['batch']} d={r['d']}"
    if r["status"] != "ok":
        return f"{what}: {r['status'].upper()} {_short(r['error'], 200)}"
    if r["level"] == "warmup":
        return (f"{what}: first fwd+bwd call {_f(r.get('first_call_ms'), '.0f')} ms in a worker "
                f"(done after {r['worker_seconds']} s)")
    if r["level"] == "correct":
        errs = " ".join(f"{k[4:]} {_f(r[k], '.1e')}" for k in r if k.startswith("err_"))
        return f"{what} {r['case']}: {errs} finite={r['finite']} ({r['first_call_ms']:.0f} ms first call)"
    tflops = f" {_f(r['tflops'])} TFLOPS" if r.get("tflops") else ""
    return (f"{what}: {_f(r['ms'])} ms peak {_f(r['peak_mb'], '.0f')} MB "
            f"first {_f(r.get('first_call_ms'), '.0f')} ms{tflops}")


def _cell(r: dict | None, tflops: bool = False) -> str:
    if r is None:
        return "-"
    if r["status"] != "ok":
        return r["status"].upper()
    text = f"{_f(r['ms'])}ms"
    if tflops and r.get("tflops") is not None:
        text += f" {r['tflops']:.0f}T"
    return text + (f" {r['peak_mb']:.0f}MB" if r.get("peak_mb") is not None else "")


def _find(records, **keys) -> dict | None:
    for r in records:
        if all(r.get(k) == v for k, v in keys.items()):
            return r
    return None


def _ratio(slow: dict | None, fast: dict | None) -> str:
    ok = slow and fast and slow["status"] == fast["status"] == "ok" and slow["ms"] and fast["ms"]
    return f"{slow['ms'] / fast['ms']:.2f}x" if ok else "-"


def table_correct(records: list[dict]) -> list[str]:
    rows = [r for r in records if r["level"] == "correct"]
    lines = ["correctness: normwise rel. error vs float64 (images 0 mixed / 1 all-invalid)",
             f"{'provider':8} {'dtype':12} {'D':>4} {'case':11} {'out':>7} {'dq':>7} {'dk':>7} {'dv':>7} "
             f"{'dt':>7} finite"]
    for r in rows:
        dtype = r["dtype"] + ("/" + r["precision"] if r.get("precision") else "")
        if r["status"] != "ok":
            lines.append(f"{r['provider']:8} {dtype:12} {r['d']:>4} {r['status'].upper()}")
            continue
        errs = " ".join(f"{r[k]:7.1e}" for k in ("err_out", "err_dq", "err_dk", "err_dv", "err_dtemperature"))
        lines.append(f"{r['provider']:8} {dtype:12} {r['d']:>4} {r['case']:11} {errs} {r['finite']}")
    firsts = [f"{r['dtype']}{'/' + r['precision'] if r.get('precision') else ''} D{r['d']} "
              f"{r['first_call_ms'] / 1e3:.1f}s" for r in rows
              if r["provider"] == "triton" and r["status"] == "ok" and r["case"] == "mixed"]
    if firsts:
        lines.append("triton first fwd+bwd call (compile/tune included): " + ", ".join(firsts))
    return lines


def table_warmup(records: list[dict]) -> list[str]:
    rows = [r for r in records if r["level"] == "warmup" and r["status"] == "ok"]
    return ["warm-up (parallel workers; first triton fwd+bwd call incl. compile/tune): " + ", ".join(
        f"{r['dtype']}{'/' + r['precision'] if r.get('precision') else ''} D{r['d']} {r['first_call_ms'] / 1e3:.1f}s"
        for r in rows)]


def table_op(records: list[dict]) -> list[str]:
    rows = [r for r in records if r["level"] == "op"]
    keys = sorted(dict.fromkeys((r["mode"], r["dtype"], r.get("precision"), r["d"]) for r in rows),
                  key=lambda k: (k[1] != "bf16", k[2] or "", k[0], k[3]))
    # the standard four first, then any other provider in the order its rows were planned
    providers = tuple(dict.fromkeys(("triton", "sdpa", "reference", "flex") + tuple(r["provider"] for r in rows)))
    lines = ["op: median ms, TFLOPS, peak MB above inputs" + (f" (B={rows[0]['batch']} H={rows[0]['heads']} "
             f"Nq={rows[0]['nq']} Nk={rows[0]['nk']})" if rows else ""),
             f"{'mode':6} {'dtype':12} {'D':>4} | " + " | ".join(f"{p:20}" for p in providers)
             + " | sdpa/tri best/tri"]
    for mode, dtype, precision, d in keys:
        sel = [r for r in rows if (r["mode"], r["dtype"], r.get("precision"), r["d"]) == (mode, dtype, precision, d)]
        cells = {p: _find(sel, provider=p) for p in providers}
        best = min((c for c in (cells["sdpa"], cells["reference"]) if c and c["status"] == "ok"),
                   key=lambda c: c["ms"], default=None)
        label = dtype + ("/" + precision if precision else "")
        lines.append(f"{mode:6} {label:12} {d:>4} | " + " | ".join(f"{_cell(cells[p], True):20}" for p in providers)
                     + f" | {_ratio(cells['sdpa'], cells['triton']):>8} {_ratio(best, cells['triton']):>8}")
    return lines + table_choices(rows)


def table_choices(rows: list[dict]) -> list[str]:
    """What backend="auto" chose per (mode, D), and which backward the triton op chose."""
    def timings(ms: dict) -> str:
        return ", ".join(f"{name} {'-' if t is None else f'{t:.2f}'}" for name, t in ms.items())

    lines = [f"auto chose {r['auto_chosen']:8} {r['mode']:6} {r['dtype']} D{r['d']} (ms: {timings(r['auto_candidates_ms'])})"
             for r in rows if r.get("auto_chosen")]
    lines += [f"triton backward {r['triton_backward']:8} {r['dtype']}{'/' + r['precision'] if r.get('precision') else ''} "
              f"D{r['d']} (ms: {timings(r['triton_backward_ms'])})" for r in rows if r.get("triton_backward")]
    return lines


def table_layer(records: list[dict]) -> list[str]:
    rows = [r for r in records if r["level"] == "layer"]
    lines = ["layer: B, C, map" + (f" = {rows[0]['batch']}, {rows[0]['d']}, {rows[0]['size']}^2" if rows else "")
             + "; bf16 = autocast",
             f"{'mode':6} {'dtype':5} | {'mhtma-triton':20} | {'contextual':20} | ctx/mhtma"]
    for mode, dtype in dict.fromkeys((r["mode"], r["dtype"]) for r in rows):
        m = _find(rows, provider="mhtma-triton", mode=mode, dtype=dtype)
        c = _find(rows, provider="contextual", mode=mode, dtype=dtype)
        lines.append(f"{mode:6} {dtype:5} | {_cell(m):20} | {_cell(c):20} | {_ratio(c, m)}")
    return lines


def table_model(records: list[dict]) -> list[str]:
    rows = [r for r in records if r["level"] == "model"]
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    lines = ["model: generator inference, ms per batch (ms per image), peak MB; bf16 = autocast"
             + (f"; {rows[0]['size']} px, base {rows[0]['d']}" if rows else ""),
             f"{'dtype':5} {'B':>3} | " + " | ".join(f"{p:24}" for p in providers)]
    for dtype, batch in dict.fromkeys((r["dtype"], r["batch"]) for r in rows):
        cells = []
        for p in providers:
            r = _find(rows, provider=p, dtype=dtype, batch=batch)
            text = _cell(r)
            if r and r["status"] == "ok":
                text = text.replace("ms", f"ms ({r['ms_per_image']:.3g})", 1)
            cells.append(f"{text:24}")
        lines.append(f"{dtype:5} {batch:>3} | " + " | ".join(cells))
    breaks = {(r["dtype"], r["graph_breaks"]) for r in rows if r.get("graph_breaks") is not None}
    if breaks:
        lines.append("torch.compile graph breaks (mhtma, triton): "
                     + ", ".join(f"{dtype} {count}" for dtype, count in sorted(breaks)))
    return lines


def table_problems(records: list[dict]) -> list[str]:
    bad = [r for r in records if r["status"] != "ok"]
    budget = [r for r in bad if r["error"] == "time budget of this part spent"]
    lines = [f"{r['status'].upper()} {r['level']} {r['provider']} {r['mode']} {r['dtype']} d={r['d']}: "
             f"{_short(r['error'], 160)}" for r in bad if r not in budget]
    if budget:
        lines.append(f"SKIPPED for time: {len(budget)} measurements ("
                     + ", ".join(sorted({r['level'] for r in budget})) + ")")
    return lines


def print_table(recorder: Recorder) -> None:
    header, records = recorder.records[0], recorder.measurements
    model = header.get("device_model")
    tiles = f" | sm_{model['arch']}, tiles {model['tile_family']}" if model else ""
    lines = [f"=== gpu_check: {header['gpu']}{tiles} | torch {header['torch']} | triton {header['triton']} | "
             f"cuda {header['cuda']} | {header['started_utc']}"]
    for part, fn in (("warmup", table_warmup), ("correct", table_correct), ("op", table_op), ("layer", table_layer),
                     ("model", table_model)):
        if any(r["level"] == part for r in records):
            lines += fn(records) + [""]
    lines += table_problems(records)
    lines.append(f"=== json: {recorder.path}")
    print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------------------------- main


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/results; with --smoke a new temp folder)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, tiny shapes, Triton interpreter (TRITON_INTERPRET=1): keeps the code paths working")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all parts (default {GPU_BUDGET_S:.0f}; {SMOKE_BUDGET_S:.0f} with --smoke)")
    parser.add_argument("--cap", type=float, default=90.0, help="seconds at most per measurement (default 90)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(generator) (mhtma)")
    args = parser.parse_args(argv)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in args.only if p not in PARTS]
    if unknown:
        parser.error(f"--only: unknown part(s) {unknown}; choose from {PARTS}")
    if args.budget is None:
        args.budget = SMOKE_BUDGET_S if args.smoke else GPU_BUDGET_S
    return args


def output_path(args, name: str) -> Path:
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="gpu-check-smoke-")) if args.smoke else RESULTS
    return Path(out) / f"gpu-check-{slug(name)}{'-smoke' if args.smoke else ''}.json"


T0 = time.monotonic()


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    # Autotuning results cached on disk: a second run on the same machine skips the tuning (0 turns it off).
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    import torch

    from . import gpu_check_cases as cases

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --smoke for the CPU interpreter run", file=sys.stderr)
        return 2
    name = gpu_name(args.smoke)
    recorder = Recorder(output_path(args, name), header_record(args, name))
    setup = cases.make_setup(args.smoke, compile_model=args.compile)
    print(f"gpu_check: {name}, parts {args.only}, budget {args.budget:.0f} s -> {recorder.path}", flush=True)
    signal.signal(signal.SIGTERM, _terminate)
    ends = deadlines(args.only, args.budget, time.monotonic())
    try:
        for part in args.only:
            run_part(recorder, part, cases.PLANS[part](setup), ends[part], args.cap, setup.device)
    except (KeyboardInterrupt, Terminated) as stop:
        print(f"gpu_check: interrupted ({type(stop).__name__}); table of what was measured:", flush=True)
    print_table(recorder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
