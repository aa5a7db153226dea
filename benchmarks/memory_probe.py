"""Child process of the CPU memory measurement: ``python -m benchmarks.memory_probe CASE_JSON | idle``.

Prints one JSON line: ``maxrss_kib`` (peak RSS of this process after running the case once) and
``inputs_maxrss_kib`` (peak RSS once the case's inputs and weights were built, before running it).
With ``idle`` it only imports what a case would import and reports its RSS.
"""
import json
import resource
import sys


def _maxrss_kib() -> int:
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
