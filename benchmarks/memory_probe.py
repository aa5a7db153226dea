"""Child process of the CPU memory measurement: ``python -m benchmarks.memory_probe CASE_JSON | idle``.

Prints one JSON line: ``maxrss_kib`` (peak RSS of this process after running the case once) and
``inputs_maxrss_kib`` (peak RSS once the case's inputs and weights were built, before running it).
With ``idle`` it only imports what a case would import and reports its RSS.

The peak is ``VmHWM`` from ``/proc/self/status``: it belongs to the address space created by exec, so it
starts from zero in this process. ``getrusage().ru_maxrss`` does not: Linux carries the forking parent's
high-water mark over into the child, which would hide every case below the (large) pytest process.
``ru_maxrss`` is only the fallback where ``/proc`` is missing.

Both modes first run the op once on a tiny problem through every CPU path (:func:`warm_up`): the first
call of any ``torch.library`` custom op imports PyTorch's custom-op machinery (about 900 modules,
~150 MiB of resident memory, measured 2026-12-01), a once-per-process cost that is not the op's memory
and would otherwise be charged to whichever case calls a custom op first.
"""
import json
import resource
import sys


def _maxrss_kib() -> int:
    """Peak resident set size of this process in KiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])  # "VmHWM:   123456 kB"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def warm_up() -> None:
    """One tiny forward + backward through each CPU path of the op (sdpa flash, chunked GEMM, reference)."""
    import torch

    from mhtma_kernels import masked_temperature_attention

    for backend, dv in (("torch", 4), ("torch", 3), ("reference", 4)):
        q, k = torch.randn(1, 1, 3, 4, requires_grad=True), torch.randn(1, 1, 3, 4)
        v, t = torch.randn(1, 1, 3, dv), torch.ones(1, 1)
        masked_temperature_attention(q, k, v, torch.ones(1, 3, dtype=torch.bool), t, backend=backend).sum().backward()


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmarks.memory_probe CASE_JSON|idle")
    from benchmarks.cases import Case
    from benchmarks.runners import build

    warm_up()
    if argv[0] == "idle":
        print(json.dumps({"maxrss_kib": _maxrss_kib(), "inputs_maxrss_kib": _maxrss_kib()}))
        return
    bench = build(Case.from_json(argv[0]))
    before = _maxrss_kib()
    bench.run()
    print(json.dumps({"maxrss_kib": _maxrss_kib(), "inputs_maxrss_kib": before}))


if __name__ == "__main__":
    main()
