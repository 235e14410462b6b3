"""shifted_conv2d: C++ kernels vs reference (`pytest benchmarks/bench_shifted_conv2d.py --benchmark-only`)."""

import pytest

from arkern.bench.shifted_conv2d import cases
from benchmarks.conftest import bench_params, run_benchmark


@pytest.mark.parametrize("case,provider,threads", bench_params(cases()))
def test_shifted_conv2d(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)
