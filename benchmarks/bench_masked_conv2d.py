"""masked_conv2d: C++ kernel vs reference (`pytest benchmarks/bench_masked_conv2d.py --benchmark-only`)."""

import pytest

from arkern.bench.masked_conv2d import cases
from benchmarks.conftest import bench_params, run_benchmark


@pytest.mark.parametrize("case,provider,threads", bench_params(cases()))
def test_masked_conv2d(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)
