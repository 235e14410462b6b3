"""causal_conv1d_varlen_states and the update step: arkern vs pure-PyTorch formulas
(`pytest benchmarks/bench_causal_conv1d_varlen.py --benchmark-only`)."""

import pytest

from arkern.bench.causal_conv1d_varlen import cases
from benchmarks.conftest import bench_params, run_benchmark


@pytest.mark.parametrize("case,provider,threads", bench_params(cases()))
def test_causal_conv1d_varlen(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)
