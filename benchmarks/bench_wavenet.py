"""wavenet: fused vs cached vs eager vs naive vs roofline (`pytest benchmarks/bench_wavenet.py --benchmark-only`)."""

import pytest

from arkern.bench.wavenet import cases, vocoder_case
from benchmarks.conftest import bench_params, run_benchmark


@pytest.mark.parametrize("case,provider,threads", bench_params(cases()))
def test_wavenet(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)


@pytest.mark.parametrize("case,provider,threads", bench_params([vocoder_case()]))
def test_wavenet_vocoder(benchmark, case, provider, threads):
    # fused vs wavenet_vocoder's own incremental_forward (the LJSpeech-size cases: python -m arkern.bench.wavenet)
    run_benchmark(benchmark, case, provider, threads)
