"""isa: the fused samplers in float32 and in bfloat16 at each instruction-set level (`pytest benchmarks/bench_isa.py
--benchmark-only`); the full table by batch size is `python -m arkern.bench.isa`."""

import pytest

from arkern.bench.isa import cases
from benchmarks.conftest import bench_params, run_benchmark


@pytest.mark.parametrize("case,provider,threads", bench_params(cases(quick=True)))
def test_isa(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)
