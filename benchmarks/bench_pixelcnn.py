"""PixelCNN-family sampling: fused C++ sampler (float32 / bfloat16 weights) vs cached vs plain-PyTorch eager
cached vs naive (`pytest benchmarks/bench_pixelcnn.py --benchmark-only --benchmark-group-by=group`).

The cases live in arkern.bench.pixelcnn; naive runs only where one whole image takes about a second
(`python -m arkern.bench.pixelcnn` prints the full table with naive extrapolated from a few forwards).
"""

import pytest

from arkern.bench.pixelcnn import cases
from benchmarks.conftest import bench_params, run_benchmark


@pytest.mark.parametrize("case,provider,threads", bench_params(cases()))
def test_pixelcnn(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)
