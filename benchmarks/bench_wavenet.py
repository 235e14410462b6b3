"""wavenet: fused vs cached vs eager vs naive vs roofline (`pytest benchmarks/bench_wavenet.py --benchmark-only`)."""

import pytest

from arkern.bench.wavenet import cases
from benchmarks.conftest import bench_params, run_benchmark


@pytest.mark.parametrize("case,provider,threads", bench_params(cases()))
def test_wavenet(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)
