"""masked_linear: C++ kernel vs reference (`pytest benchmarks/bench_masked_linear.py --benchmark-only`)."""

import pytest

from arkern.bench.masked_linear import cases
from benchmarks.conftest import bench_params, run_benchmark


@pytest.mark.parametrize("case,provider,threads", bench_params(cases()))
def test_masked_linear(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)
