"""pytest-benchmark glue: every suite runs the cases of arkern.bench.<family> at 1 and 2 threads.

Ratios between providers are only meaningful within one run: read them from the same table
(`pytest benchmarks/ --benchmark-only --benchmark-group-by=group`).
"""

from __future__ import annotations

import pytest
import torch

from arkern.bench.harness import default_isa

THREADS = (1, 2)


def bench_params(cases) -> list:
    """(case, provider, threads) params for a suite, ids readable in the pytest-benchmark table."""
    params = []
    for case in cases:
        providers = list(case.setup().keys())
        for p in providers:
            for t in THREADS:
                params.append(pytest.param(case, p, t, id=f"{case.name}-{p}-{t}t"))
    return params


@pytest.fixture(scope="session")
def smoke_run(pytestconfig) -> bool:
    """True in the CI smoke run (--benchmark-disable: every body once, untimed), where suites run small
    stand-ins for their real-size configurations."""
    return bool(pytestconfig.getoption("benchmark_disable", default=False))


def run_benchmark(benchmark, case, provider: str, threads: int, rounds: int | None = None) -> None:
    """Time one provider of a case with `threads` intra-op threads; grouped by case and thread count.
    rounds: a fixed number of single calls (for calls of many seconds) instead of pytest-benchmark's calibration."""
    fns = case.setup()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        benchmark.group = f"{case.family}: {case.name} ({threads} thread{'s' if threads > 1 else ''})"
        benchmark.extra_info.update(provider=provider, baseline=case.baseline, threads=threads,
                                    dtype=str(case.params.get("dtype", "float32")))
        if rounds is None:
            benchmark(fns[provider])
        else:
            benchmark.pedantic(fns[provider], rounds=rounds, iterations=1)
        benchmark.extra_info["isa"] = (case.isa(provider) if case.isa else None) or default_isa(provider)
    finally:
        torch.set_num_threads(old)


def run_contention(benchmark, name: str, threads: int) -> None:
    """Time one arkern.bench.contention case (fused sampler) with `threads` threads; the caller runs it next
    to a busy process. Grouped by case, so the 1- and 2-thread rows sit together."""
    from arkern.bench.contention import CASES

    prepare, items = CASES[name]()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        prepare()()  # warm-up: packing, the team's threads
        benchmark.group = f"contention: {name}, next to a busy process"
        benchmark.extra_info.update(threads=threads, items=items)
        benchmark.pedantic(lambda run: run(), setup=lambda: ((prepare(),), {}), rounds=5)
    finally:
        torch.set_num_threads(old)
