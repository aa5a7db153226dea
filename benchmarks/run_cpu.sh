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
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
name=$($PY -c "
import re
model = next((l.split(':', 1)[1] for l in open('/proc/cpuinfo') if l.startswith('model name')), 'cpu')
print(re.sub(r'[^A-Za-z0-9]+', '-', model).strip('-'))" 2>/dev/null || echo cpu)
mkdir -p benchmarks/results
out="benchmarks/results/cpu-${name}${BENCH_PART:+-$BENCH_PART}.json"
$PY -m pytest benchmarks -p no:cacheprovider -o python_files='bench_*.py' --bench-profile cpu \
    --benchmark-json "$out" --benchmark-columns=min,median,max,rounds -rs "$@" 2>&1 | tee "${out%.json}.log"
rc=${PIPESTATUS[0]}
if [ -s "$out" ]; then
    $PY -m benchmarks.report benchmarks/results/cpu-"${name}"*.json --section cpu --tag "cpu-${name}" --stat "${BENCH_STAT:-min}"
fi
exit "$rc"
