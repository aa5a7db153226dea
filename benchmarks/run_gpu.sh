#!/usr/bin/env bash
# The whole GPU suite (op, layer, model; see benchmarks/profiles.py), then the report.
# Saves benchmarks/results/gpu-<GPU name>.json (+ .log) and rewrites the GPU section of benchmarks/README.md.
# Extra arguments go to pytest, e.g. `bash benchmarks/run_gpu.sh -k "op and bf16"`; BENCH_FULL=1 runs every
# shape in every dtype; BENCH_NOTE="..." is stored with the machine info. The whole suite takes long (FlexAttention
# compiles every shape): to run it in parts, give each part a name, e.g.
#   BENCH_PART=op-core bash benchmarks/run_gpu.sh -k "op and not flex"
#   BENCH_PART=op-flex bash benchmarks/run_gpu.sh -k "op and flex"
#   BENCH_PART=layer-model bash benchmarks/run_gpu.sh -k "layer or model"
# Each part saves gpu-<GPU>-<part>.json; the report is rebuilt from all gpu-<GPU>*.json files after each part.
set -uo pipefail
. "$(dirname "$0")/suite.sh"  # the repository root, $PY, run_suite
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "run_gpu.sh: CUDA is not available; use benchmarks/run_cpu.sh" >&2
    exit 2
fi
name=$($PY -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name(0)).strip('-'))")
run_suite gpu "$name" "" "$@"
