"""PixelCNN-family sampling: naive vs cached vs plain-PyTorch eager cached
(`pytest benchmarks/bench_pixelcnn.py --benchmark-only`)."""

import pytest

from arkern.bench.pixelcnn import cases
from benchmarks.conftest import bench_params, run_benchmark


@pytest.mark.parametrize("case,provider,threads", bench_params(cases()))
def test_pixelcnn(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)
