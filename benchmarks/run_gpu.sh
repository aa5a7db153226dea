#!/usr/bin/env bash
# The whole GPU suite (op, layer, model; see benchmarks/profiles.py), then the report.
# Saves benchmarks/results/gpu-<GPU name>.json (+ .log) and rewrites the GPU section of benchmarks/README.md.
# Extra arguments go to pytest, e.g. `bash benchmarks/run_gpu.sh -k "op and bf16"`; BENCH_FULL=1 runs every
# shape in every dtype; BENCH_NOTE="..." is stored with the machine info.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "run_gpu.sh: CUDA is not available; use benchmarks/run_cpu.sh" >&2
    exit 2
fi
name=$($PY -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name(0)).strip('-'))")
mkdir -p benchmarks/results
out="benchmarks/results/gpu-${name}.json"
$PY -m pytest benchmarks -p no:cacheprovider -o python_files='bench_*.py' --bench-profile gpu \
    --benchmark-json "$out" --benchmark-columns=min,median,max,rounds -rs "$@" 2>&1 | tee "benchmarks/results/gpu-${name}.log"
rc=${PIPESTATUS[0]}
if [ -s "$out" ]; then
    $PY -m benchmarks.report "$out" --section gpu --tag "gpu-${name}"
fi
exit "$rc"
