"""wavenet: fused vs cached vs eager vs naive vs roofline (`pytest benchmarks/bench_wavenet.py --benchmark-only`).

Every case runs at 1 and 2 threads (batch 1: the decode team splits each step's products over the cores);
`test_wavenet_contention` times the fused sampler at 1 and 2 threads next to a competing busy process
(arkern.bench.contention), where 2 threads must not be slower than 1.
"""

import pytest

from arkern.bench.contention import CASES, busy_process
from arkern.bench.wavenet import cases, vocoder_case
from benchmarks.conftest import THREADS, bench_params, run_benchmark, run_contention


@pytest.mark.parametrize("case,provider,threads", bench_params(cases()))
def test_wavenet(benchmark, case, provider, threads):
    run_benchmark(benchmark, case, provider, threads)


@pytest.mark.parametrize("case,provider,threads", bench_params([vocoder_case()]))
def test_wavenet_vocoder(benchmark, case, provider, threads):
    # fused vs wavenet_vocoder's own incremental_forward (the LJSpeech-size cases: python -m arkern.bench.wavenet)
    if provider == "wavenet_vocoder" and threads > 1:
        pytest.skip("upstream's per-op Python loop on 2 threads times torch's thread pool waiting, not sampling "
                    "(README, WaveNet vocoders); its 1-thread figure is the baseline")
    run_benchmark(benchmark, case, provider, threads)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("WaveNet")])
def test_wavenet_contention(benchmark, name, threads):
    with busy_process():
        run_contention(benchmark, name, threads)
