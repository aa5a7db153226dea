"""The CPU speed target: the MHTMA layer against the for-loop ContextualAttention, fp32 forward, no_grad.

    PYTHONPATH=. python -m benchmarks.cpu_layer_ratio                  # B=16, 32x32 map, 64 channels
    PYTHONPATH=. python -m benchmarks.cpu_layer_ratio --rounds 3 --batch 2 --size 8   # a quick look

Run it on a quiet machine: the ratios mean nothing while other processes share the cores.

For 1 and then 2 threads (``torch.set_num_threads``), every provider is warmed up once, then the
providers are run in turn, one forward each, ``--rounds`` times (interleaved in one process, so that a
change of machine load hits them alike). Providers: ``MaskedTemperatureAttention(64, heads=2,
backend=...)`` for each of ``--backends`` (default ``torch`` and ``auto``) and ``ContextualAttention``.
Printed per thread count and provider: the median ms, and the speed ratio loop / layer (the target:
at least 0.8 for the layer). With ``--auto-report`` the choices of ``backend="auto"``
(``mhtma_kernels.ops.dispatch_report()``) are printed as well. ``--json PATH`` writes the medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mhtma_kernels import ContextualAttention, MaskedTemperatureAttention
from mhtma_kernels.ops import dispatch_report

from .cases import square_hole


def build(backends: tuple[str, ...], channels: int) -> dict:
    """name -> layer (seeded, fp32, eval)."""
    layers = {}
    for backend in backends:
        torch.manual_seed(0)
        layers[f"mhtma-{backend}"] = MaskedTemperatureAttention(channels, heads=2, backend=backend).eval()
    torch.manual_seed(0)
    layers["contextual"] = ContextualAttention(in_channels=channels).eval()
    return layers


def interleaved_ms(layers: dict, x: torch.Tensor, mask: torch.Tensor, rounds: int) -> dict:
    """Median ms of one forward per layer, the layers run in turn ``rounds`` times after one warm-up each."""
    times = {name: [] for name in layers}
    with torch.no_grad():
        for layer in layers.values():
            layer(x, mask)
        for _ in range(rounds):
            for name, layer in layers.items():
                start = time.perf_counter()
                layer(x, mask)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ms) for name, ms in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_layer_ratio", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="feature map side")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=["torch", "auto"])
    parser.add_argument("--auto-report", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(1)
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    mask = square_hole(args.batch, args.size)
    layers = build(tuple(args.backends), args.channels)
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        medians = interleaved_ms(layers, x, mask, args.rounds)
        loop = medians["contextual"]
        print(f"threads={threads} B={args.batch} map={args.size}x{args.size} C={args.channels} fp32 no_grad, "
              f"median of {args.rounds} interleaved runs:")
        for name, ms in medians.items():
            ratio = "" if name == "contextual" else f"   speed vs loop {loop / ms:.2f}x (target >= 0.8)"
            print(f"  {name:14} {ms:9.2f} ms{ratio}")
        results.append(dict(threads=threads, batch=args.batch, size=args.size, channels=args.channels,
                            rounds=args.rounds, median_ms=medians))
    if args.auto_report:
        for decision in dispatch_report():
            print(f"  auto: {decision['chosen']} for {decision['key']} (ms: {decision['candidates']})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(dict(results=results, auto=dispatch_report()), file, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
