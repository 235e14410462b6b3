"""PixelCNN-family sampling: fused C++ sampler (float32 / bfloat16 weights) vs cached vs plain-PyTorch eager
cached vs naive (`pytest benchmarks/bench_pixelcnn.py --benchmark-only --benchmark-group-by=group`).

The cases live in arkern.bench.pixelcnn; naive runs only where one whole image takes about a second
(`python -m arkern.bench.pixelcnn` prints the full table with naive extrapolated from a few forwards).
Every case runs at 1 and 2 threads; `test_pixelcnn_contention` times the fused samplers at 1 and 2 threads
next to a competing busy process (arkern.bench.contention), where 2 threads must not be slower than 1.

The CIFAR PixelCNN++ (53.6M parameters) is timed once per call: "fused" (float32) and "fused-bf16" (the
bfloat16 precision, AMX tiles where the CPU has them) whole images against one step of the upstream-style naive
loop (32·32 steps make an image; extra_info["images"] per call gives images/s for both).
The CI smoke run (--benchmark-disable) runs a small stand-in instead; `python -m arkern.bench.pixelcnn --cifar`
prints the real-size table with peak RSS.
"""

import pytest

from arkern.bench.contention import CASES, busy_process
from arkern.bench.pixelcnn import cases, cifar_case
from benchmarks.conftest import THREADS, bench_params, run_benchmark, run_contention


@pytest.mark.parametrize("case,provider,threads", bench_params(cases()))
def test_pixelcnn(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("PixelCNN")])
def test_pixelcnn_contention(benchmark, name, threads):
    with busy_process():
        run_contention(benchmark, name, threads)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("batch", (1, 16, 64))
@pytest.mark.parametrize("provider", ("fused", "fused-bf16", "naive-step"))
def test_pixelcnnpp_cifar(benchmark, smoke_run, provider, batch, threads):
    case = cifar_case(batch, small=smoke_run)
    benchmark.extra_info["images"] = case.params["images"][provider]
    run_benchmark(benchmark, case, provider, threads, rounds=1 if batch > 1 or provider == "naive-step" else 3)
