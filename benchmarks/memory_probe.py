"""Child process of the CPU memory measurement: ``python -m benchmarks.memory_probe CASE_JSON | idle``.

Prints one JSON line: ``maxrss_kib`` (peak RSS of this process after running the case once) and
``inputs_maxrss_kib`` (peak RSS once the case's inputs and weights were built, before running it).
With ``idle`` it only imports what a case would import and reports its RSS.

The peak is ``VmHWM`` from ``/proc/self/status``: it belongs to the address space created by exec, so it
starts from zero in this process. ``getrusage().ru_maxrss`` does not: Linux carries the forking parent's
high-water mark over into the child, which would hide every case below the (large) pytest process.
``ru_maxrss`` is only the fallback where ``/proc`` is missing.
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


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmarks.memory_probe CASE_JSON|idle")
    from benchmarks.cases import Case
    from benchmarks.runners import build

    if argv[0] == "idle":
        print(json.dumps({"maxrss_kib": _maxrss_kib(), "inputs_maxrss_kib": _maxrss_kib()}))
        return
    bench = build(Case.from_json(argv[0]))
    before = _maxrss_kib()
    bench.run()
    print(json.dumps({"maxrss_kib": _maxrss_kib(), "inputs_maxrss_kib": before}))


if __name__ == "__main__":
    main()
