"""causal_conv1d: C++ kernels vs reference (`pytest benchmarks/bench_causal_conv1d.py --benchmark-only`)."""

import pytest

from arkern.bench.causal_conv1d import cases
from benchmarks.conftest import bench_params, run_benchmark


@pytest.mark.parametrize("case,provider,threads", bench_params(cases()))
def test_causal_conv1d(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)
