"""Benchmarks of masked temperature attention: op, layer and model level (pytest-benchmark suites).

Run with ``bash benchmarks/run_cpu.sh`` or ``bash benchmarks/run_gpu.sh``; turn saved JSON into
tables and plots with ``python -m benchmarks.report RESULTS.json...``. Not collected by the default
test run (the suites are named ``bench_*.py``).
"""
