"""Turn saved pytest-benchmark JSON into markdown tables and PNG plots.

    python -m benchmarks.report RESULTS.json... [--readme benchmarks/README.md] [--out benchmarks/results]
                                                [--section cpu|gpu]

Writes the tables between ``<!-- BEGIN RESULTS <section> -->`` and ``<!-- END RESULTS <section> -->`` in
the README (appended when the markers are missing; everything outside them is left alone) and the plots
into ``--out``. Section defaults to ``gpu`` when any case ran on CUDA, else ``cpu``.

Columns: times are the pytest-benchmark median of the timed rounds (``--stat min`` for a shared machine); "speedup vs X" = time(X) / time(provider) (> 1 = faster
than X); "ref / X" memory ratios = memory(reference) / memory(X) (> 1 = X needs less). ``peak`` counts
inputs and weights, ``work`` only what the computation adds (see :mod:`benchmarks.memory`).
"""
from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

from mhtma_model.networks import KERNEL_BACKENDS

from .providers import OP_PROVIDERS
from .builders import LAYER_PROVIDERS, MODEL_PROVIDERS

HERE = Path(__file__).resolve().parent
OP_ORDER = OP_PROVIDERS
FUSED = tuple(p for p in KERNEL_BACKENDS if p != "reference")  # the backends that never hold the Nq x Nk scores
LAYER_ORDER = LAYER_PROVIDERS
MODEL_ORDER = MODEL_PROVIDERS
MIB = 1024.0 * 1024.0


STAT = {"name": "median"}


def load(paths, stat: str = "median") -> tuple[list[dict], dict]:
    """Entries ``{**extra_info, "time": seconds}`` (``stat`` of the timed rounds; the later run, by the
    ``datetime`` pytest-benchmark records, wins per case whatever the order of ``paths``) and the merged
    machine info."""
    rows, machine = {}, {}
    runs = [json.loads(Path(path).read_text()) for path in paths]
    for data in sorted(runs, key=lambda d: str(d.get("datetime", ""))):
        machine.update(data.get("machine_info", {}))
        machine.setdefault("dates", []).append(str(data.get("datetime", "?"))[:19])
        for bench in data.get("benchmarks", []):
            info = dict(bench.get("extra_info", {}))
            stats = bench.get("stats") or {}
            if "level" not in info or stats.get(stat) is None:
                continue
            info["time"] = float(stats[stat])
            info["rounds"] = stats.get("rounds")
            key = (info["level"], info["provider"], info["mode"], info["dtype"], info["batch"], info["size"],
                   info["d"], info.get("device"))
            rows[key] = info
    return list(rows.values()), machine


def _ms(seconds) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.3g}"


def _ratio(num, den) -> str:
    return "–" if not num or not den else f"{num / den:.2f}×"


def _mib(value) -> str:
    return "–" if value is None else f"{value / MIB:.1f}"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _ordered(present, order):
    return [p for p in order if p in present] + sorted(set(present) - set(order))


def _by_mode_and_dtype(rows: list[dict], level: str) -> list:
    """``[((mode, dtype), {(size, d, batch, provider): row})]`` of one level, sorted."""
    groups = defaultdict(dict)
    for r in rows:
        if r["level"] == level:
            groups[(r["mode"], r["dtype"])][(r["size"], r["d"], r["batch"], r["provider"])] = r
    return sorted(groups.items())


def op_tables(rows: list[dict]) -> str:
    out = []
    for (mode, dtype), cases in _by_mode_and_dtype(rows, "op"):
        providers = _ordered({k[3] for k in cases}, OP_ORDER)
        fused = [p for p in FUSED if p in providers]
        shapes = sorted({k[:3] for k in cases})
        label = "forward" if mode == "fwd" else "forward + backward"
        head = ["feature map", "D", "B"] + [f"{p} ms" for p in providers] + [f"{p} TFLOPS" for p in fused]
        head += [f"{p} vs {base}" for p in fused for base in ("sdpa", "flex") if base in providers]
        body = []
        for size, d, b in shapes:
            get = lambda p: cases.get((size, d, b, p), {})  # noqa: E731
            row = [f"{size}²", str(d), str(b)] + [_ms(get(p).get("time")) for p in providers]
            row += ["–" if get(p).get("tflops") is None else f"{get(p)['tflops']:.3g}" for p in fused]
            row += [_ratio(get(base).get("time"), get(p).get("time"))
                    for p in fused for base in ("sdpa", "flex") if base in providers]
            body.append(row)
        out.append(f"#### Op, {label}, {dtype}: {STAT['name']} time\n\n{_table(head, body)}")
        head = ["feature map", "D", "B"] + [f"{p} peak (work) MiB" for p in providers]
        others = [p for p in providers if p != "reference"]
        if "reference" in providers:
            head += [f"ref / {p} peak" for p in others] + [f"ref / {p} work" for p in others]
        body = []
        for size, d, b in shapes:
            get = lambda p: cases.get((size, d, b, p), {})  # noqa: E731
            row = [f"{size}²", str(d), str(b)]
            row += [f"{_mib(get(p).get('peak_mem_bytes'))} ({_mib(get(p).get('work_mem_bytes'))})" for p in providers]
            if "reference" in providers:
                ref = get("reference")
                row += [_ratio(ref.get("peak_mem_bytes"), get(p).get("peak_mem_bytes")) for p in others]
                row += [_ratio(ref.get("work_mem_bytes"), get(p).get("work_mem_bytes")) for p in others]
            body.append(row)
        out.append(f"#### Op, {label}, {dtype}: peak memory\n\n{_table(head, body)}")
    return "\n\n".join(out)


def layer_tables(rows: list[dict]) -> str:
    out = []
    for (mode, dtype), cases in _by_mode_and_dtype(rows, "layer"):
        providers = _ordered({k[3] for k in cases}, LAYER_ORDER)
        mhtma = [p for p in providers if p.startswith("mhtma-")]
        bases = [p for p in ("contextual", "atma") if p in providers]
        head = ["feature map", "C", "B"] + [f"{p} ms" for p in providers]
        head += [f"{p} vs {b}" for p in mhtma for b in bases] + [f"{p} peak MiB" for p in providers]
        body = []
        for size, c, b in sorted({k[:3] for k in cases}):
            get = lambda p: cases.get((size, c, b, p), {})  # noqa: E731
            row = [f"{size}²", str(c), str(b)] + [_ms(get(p).get("time")) for p in providers]
            row += [_ratio(get(base).get("time"), get(p).get("time")) for p in mhtma for base in bases]
            row += [_mib(get(p).get("peak_mem_bytes")) for p in providers]
            body.append(row)
        label = "forward" if mode == "fwd" else "forward + backward"
        out.append(f"#### Layer, {label}, {dtype} (speedup vs the for-loop baseline = `vs contextual`)\n\n"
                   f"{_table(head, body)}")
    return "\n\n".join(out)


def model_table(rows: list[dict]) -> str:
    cases = sorted((r for r in rows if r["level"] == "model"),
                   key=lambda r: (r["mode"], r["size"], r["batch"], MODEL_ORDER.index(r["provider"])
                                  if r["provider"] in MODEL_ORDER else 99))
    if not cases:
        return ""
    head = ["what", "attention", "image", "base", "B", f"{STAT['name']} ms", "ms per image", "images/s", "peak MiB"]
    body = [["inference" if r["mode"] == "fwd" else "train step (G+D)", r["provider"], f"{r['size']}²",
             str(r["d"]), str(r["batch"]), _ms(r["time"]), _ms(r["time"] / r["batch"]),
             f"{r['batch'] / r['time']:.3g}", _mib(r.get("peak_mem_bytes"))] for r in cases]
    return "#### Model (generator; base = base_channels)\n\n" + _table(head, body)


def _find(rows, **want):
    return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)


def targets(rows: list[dict]) -> str:
    """The issue's target ratios, as measured (no extrapolation); 'not measured' where the case is absent."""
    lines = []
    for base in ("sdpa", "flex"):
        fused = _find(rows, level="op", provider="triton", mode="fwdbwd", dtype="bf16", batch=16, size=64, d=576)
        other = _find(rows, level="op", provider=base, mode="fwdbwd", dtype="bf16", batch=16, size=64, d=576)
        if fused and other:
            ratio = other["time"] / fused["time"]
            lines.append(f"- fused fwd+bwd vs {base} (B=16, 64², D=576, bf16): **{ratio:.2f}×** "
                         f"(target ≥ 1.3×: {'met' if ratio >= 1.3 else 'not met'})")
        else:
            lines.append(f"- fused fwd+bwd vs {base} (B=16, 64², D=576, bf16): not measured")
    layer = [r for r in rows if r["level"] == "layer" and r["provider"].startswith("mhtma-")]
    for mode in ("fwd", "fwdbwd"):
        best = {}
        for r in (r for r in layer if r["mode"] == mode):
            base = _find(rows, level="layer", provider="contextual", mode=mode, batch=r["batch"], size=r["size"],
                         d=r["d"])
            if base:
                ratio = base["time"] / r["time"]
                if r["batch"] not in best or ratio > best[r["batch"]][0]:
                    best[r["batch"]] = (ratio, r["provider"], r["size"], r["d"])
        if 16 in best:
            ratio, p, size, c = best[16]
            # GPU: the fused op's target; CPU (torch backend, 32², C=64): the issue on the model's speed
            goal = 0.8 if p == "mhtma-torch" and size == 32 and c == 64 else 30
            lines.append(f"- layer {mode} vs the for-loop baseline at batch 16 ({p}, {size}², C={c}): "
                         f"**{ratio:.2f}×** (target ≥ {goal:g}×: {'met' if ratio >= goal else 'not met'})")
        elif best:
            b = max(best)
            ratio, p, size, c = best[b]
            lines.append(f"- layer {mode} vs the for-loop baseline: batch 16 not measured; largest measured batch "
                         f"{b} ({p}, {size}², C={c}): {ratio:.2f}× (the target ≥ 30× is stated for batch 16)")
    for provider in ("triton", "torch"):
        ratios = []
        for r in rows:
            if r["level"] == "op" and r["provider"] == provider and r["size"] == 64 and r.get("peak_mem_bytes"):
                ref = _find(rows, level="op", provider="reference", mode=r["mode"], dtype=r["dtype"],
                            batch=r["batch"], size=64, d=r["d"], device=r.get("device"))
                if ref and ref.get("peak_mem_bytes"):
                    ratios.append(ref["peak_mem_bytes"] / r["peak_mem_bytes"])
        if ratios:
            lines.append(f"- op peak memory, reference / {provider} at 64² over {len(ratios)} cases: "
                         f"min **{min(ratios):.2f}×**, max {max(ratios):.2f}× (target ≥ 20× for the fused op"
                         f"{'' if provider == 'triton' else '; informative for torch'}: "
                         f"{'met' if min(ratios) >= 20 else 'not met'} at the minimum)")
        else:
            lines.append(f"- op peak memory, reference / {provider} at 64²: not measured")
    cpu = []
    for r in rows:
        if r["level"] == "op" and r["provider"] == "torch" and r.get("device") == "cpu" and r.get("peak_mem_bytes"):
            ref = _find(rows, level="op", provider="reference", mode=r["mode"], dtype=r["dtype"], batch=r["batch"],
                        size=r["size"], d=r["d"], device="cpu")
            if ref and ref.get("peak_mem_bytes"):
                cpu.append((r["peak_mem_bytes"] / ref["peak_mem_bytes"], r))
    if cpu:
        worst, r = max(cpu, key=lambda x: x[0])
        lines.append(f"- CPU torch backend peak memory / reference over {len(cpu)} cases: worst **{worst:.3f}** "
                     f"(= 1/{1 / worst:.1f}, at {r['mode']} B={r['batch']} {r['size']}² D={r['d']}; target ≤ 1/8: "
                     f"{'met' if worst <= 1 / 8 else 'not met'} in the worst case, met in "
                     f"{sum(x <= 1 / 8 for x, _ in cpu)} of {len(cpu)})")
    else:
        lines.append("- CPU torch backend peak memory vs reference: not measured")
    return "#### Targets (ratios from this run; not asserted anywhere)\n\n" + "\n".join(lines)


def _series(cases, x_key, fixed: dict, value):
    data = defaultdict(list)
    for r in cases:
        if all(r.get(k) == v for k, v in fixed.items()) and value(r) is not None:
            data[r["provider"]].append((x_key(r), value(r)))
    return {p: sorted(v) for p, v in data.items() if len(v) >= 2}


def plots(rows: list[dict], out: Path, tag: str) -> list[Path]:
    """time and memory vs batch and vs N, one PNG per (level, mode, dtype); returns the written files.

    Needs matplotlib (the ``bench`` dependency); without it, warns and writes no plots.
    """
    try:
        import matplotlib
    except ImportError:
        import warnings

        warnings.warn("matplotlib is not installed: tables only, no plots (pip install matplotlib)", stacklevel=2)
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    groups = defaultdict(list)
    for r in rows:
        if r["level"] in ("op", "layer"):
            groups[(r["level"], r["mode"], r["dtype"])].append(r)
    for (level, mode, dtype), cases in sorted(groups.items()):
        sizes = sorted({r["size"] for r in cases})
        ds = sorted({r["d"] for r in cases}, key=lambda d: (-sum(r["d"] == d for r in cases), d))
        d = ds[0]
        by_size = {s: sorted({r["batch"] for r in cases if r["size"] == s and r["d"] == d}) for s in sizes}
        size = max(sizes, key=lambda s: (len(by_size[s]), s))
        batches = sorted({r["batch"] for r in cases if r["d"] == d})
        batch = max(batches, key=lambda b: (len({r["size"] for r in cases if r["batch"] == b and r["d"] == d}), b))
        dim = "D" if level == "op" else "C"
        panels = [
            ("time vs batch", f"batch ({size}², {dim}={d})", f"{STAT['name']} time (ms)",
             _series(cases, lambda r: r["batch"], {"size": size, "d": d}, lambda r: r["time"] * 1e3)),
            ("peak memory vs batch", f"batch ({size}², {dim}={d})", "peak memory (MiB)",
             _series(cases, lambda r: r["batch"], {"size": size, "d": d},
                     lambda r: None if r.get("peak_mem_bytes") is None else r["peak_mem_bytes"] / MIB)),
            ("time vs N", f"Nq = H·W (B={batch}, {dim}={d})", f"{STAT['name']} time (ms)",
             _series(cases, lambda r: r["size"] ** 2, {"batch": batch, "d": d}, lambda r: r["time"] * 1e3)),
            ("peak memory vs N", f"Nq = H·W (B={batch}, {dim}={d})", "peak memory (MiB)",
             _series(cases, lambda r: r["size"] ** 2, {"batch": batch, "d": d},
                     lambda r: None if r.get("peak_mem_bytes") is None else r["peak_mem_bytes"] / MIB)),
        ]
        panels = [p for p in panels if p[3]]
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        for ax, (title, xlabel, ylabel, series) in zip(axes[0], panels):
            for provider, points in sorted(series.items()):
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=provider)
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        label = "forward" if mode == "fwd" else "forward+backward"
        fig.suptitle(f"{tag}: {level}, {label}, {dtype}")
        fig.tight_layout()
        path = out / f"{tag}-{level}-{mode}-{dtype}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def machine_text(machine: dict, rows: list[dict]) -> str:
    cpu = machine.get("cpu", {}) if isinstance(machine.get("cpu"), dict) else {}
    parts = [
        f"- run(s): {', '.join(sorted(machine.get('dates', []))) or '?'} (UTC)",
        f"- CPU: {machine.get('cpu_model') or cpu.get('brand_raw', '?')}, {machine.get('cpu_count', cpu.get('count', '?'))}"
        " logical cores",
        f"- GPU: {machine.get('gpu', 'none')}",
        f"- torch {machine.get('torch', '?')}, triton {machine.get('triton', '?')}, "
        f"python {machine.get('python_version', '?')}",
    ]
    rounds = sorted({r["rounds"] for r in rows if r.get("rounds")})
    parts.append(f"- times: the {STAT['name']} of {'/'.join(map(str, rounds)) or '?'} timed rounds per case, after warm-up")
    if machine.get("note"):
        parts.append(f"- note: {machine['note']}")
    flex = {r.get("flex_temperature") for r in rows if r.get("provider") == "flex" and r.get("flex_temperature")}
    if flex:
        parts.append(f"- FlexAttention temperature: {', '.join(sorted(flex))}; D zero-padded to the next power of two")
    return "\n".join(parts)


def render(rows, machine, images: list[Path], readme_dir: Path) -> str:
    blocks = [machine_text(machine, rows), targets(rows), op_tables(rows), layer_tables(rows), model_table(rows)]
    if images:
        blocks.append("#### Plots\n\n" + "\n".join(
            f"![{p.stem}]({os.path.relpath(p, readme_dir)})" for p in images))
    return "\n\n".join(b for b in blocks if b)


def write_section(readme: Path, section: str, text: str) -> None:
    begin, end = f"<!-- BEGIN RESULTS {section} -->", f"<!-- END RESULTS {section} -->"
    old = readme.read_text() if readme.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block + "\n"
    readme.write_text(new)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the PNG plots")
    parser.add_argument("--section", choices=("cpu", "gpu"), default=None)
    parser.add_argument("--tag", default=None, help="plot file prefix (default: the section)")
    parser.add_argument("--stat", choices=("median", "min", "mean"), default="median",
                        help="which statistic of the timed rounds the tables use (min suits a shared machine)")
    args = parser.parse_args(argv)
    for path in args.results:
        if not Path(path).is_file():
            parser.error(f"results file not found: {path}")
    STAT["name"] = args.stat
    rows, machine = load(args.results, args.stat)
    if not rows:
        parser.error(f"no benchmark entries with mhtma extra_info in {args.results}")
    section = args.section or ("gpu" if any(r.get("device") == "cuda" for r in rows) else "cpu")
    images = plots(rows, args.out, args.tag or section)
    write_section(args.readme, section, render(rows, machine, images, args.readme.resolve().parent))
    print(f"wrote {args.readme} (section {section}) and {len(images)} plot(s) under {args.out}")


if __name__ == "__main__":
    main()
