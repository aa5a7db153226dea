#!/usr/bin/env bash
# The CPU suite (a subset sized for a small machine; see benchmarks/profiles.py), then the report.
# Saves benchmarks/results/cpu-<CPU model>.json (+ .log) and rewrites the CPU section of benchmarks/README.md.
# Peak memory is measured in one fresh process per case (--bench-memory off skips that).
# Tables use the fastest timed round (BENCH_STAT=min; median is noisier on a shared machine).
# BENCH_PART=name saves cpu-<CPU>-<name>.json (e.g. with -k model) and the report merges all cpu-<CPU>*.json.
# Extra arguments go to pytest; BENCH_NOTE="..." is stored with the machine info (e.g. that the machine was shared).
set -uo pipefail
# BENCH_THREADS=N pins torch to N threads (OMP_NUM_THREADS, inherited by the memory probes); on a machine
# shared with other jobs one thread per process gives far steadier numbers than oversubscribed cores.
if [ -n "${BENCH_THREADS:-}" ]; then export OMP_NUM_THREADS="$BENCH_THREADS" MKL_NUM_THREADS="$BENCH_THREADS"; fi
. "$(dirname "$0")/suite.sh"  # the repository root, $PY, run_suite
name=$($PY -c "
import re
model = next((l.split(':', 1)[1] for l in open('/proc/cpuinfo') if l.startswith('model name')), 'cpu')
print(re.sub(r'[^A-Za-z0-9]+', '-', model).strip('-'))" 2>/dev/null || echo cpu)
run_suite cpu "$name" "${BENCH_STAT:-min}" "$@"
