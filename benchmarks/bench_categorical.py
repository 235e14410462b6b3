"""categorical: the fused samplers' categorical draw against sample_categorical (`pytest
benchmarks/bench_categorical.py --benchmark-only`)."""

import pytest

from arkern.bench.categorical import cases
from benchmarks.conftest import bench_params, run_benchmark


@pytest.mark.parametrize("case,provider,threads", bench_params(cases(quick=True)))
def test_categorical(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)
