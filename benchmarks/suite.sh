# What run_cpu.sh and run_gpu.sh share (sourced, not run): go to the repository root, $PY, and run_suite.
#   run_suite PROFILE NAME STAT [PYTEST-ARGS...]
# runs the benchmark suite of PROFILE (benchmarks/profiles.py), saves benchmarks/results/PROFILE-NAME.json
# (BENCH_PART=part: PROFILE-NAME-part.json) and its .log, then rebuilds the PROFILE section of benchmarks/README.md
# from every PROFILE-NAME*.json (STAT: the statistic of the tables; empty = the report's default). Returns
# pytest's exit status.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=${PYTHON:-python}

run_suite() {
    local profile=$1 name=$2 stat=$3
    shift 3
    mkdir -p benchmarks/results
    local out="benchmarks/results/${profile}-${name}${BENCH_PART:+-$BENCH_PART}.json"
    $PY -m pytest benchmarks -p no:cacheprovider -o python_files='bench_*.py' --bench-profile "$profile" \
        --benchmark-json "$out" --benchmark-columns=min,median,max,rounds -rs "$@" 2>&1 | tee "${out%.json}.log"
    local rc=${PIPESTATUS[0]}
    if [ -s "$out" ]; then
        $PY -m benchmarks.report benchmarks/results/"${profile}-${name}"*.json --section "$profile" \
            --tag "${profile}-${name}" ${stat:+--stat "$stat"}
    fi
    return "$rc"
}
