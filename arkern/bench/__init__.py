"""Benchmark cases and the report behind `arkern bench` / `make demo`.

Each op family has a module here defining ``cases(quick) -> list[Case]``; the pytest-benchmark suites in
benchmarks/ and the report both run those same cases, so a configuration is written once. Every case
names its baseline provider (the reference op, the eager sampler, ...); ratios are always
``baseline time / provider time`` measured in the same run.
"""

from arkern.bench.harness import Case, Measurement, measure, run_report

FAMILIES: tuple[str, ...] = ("masked_conv2d", "shifted_conv2d", "causal_conv1d", "masked_linear", "wavenet", "pixelcnn",
                             "causal_conv1d_varlen", "isa", "categorical")

__all__ = ["Case", "Measurement", "measure", "run_report", "FAMILIES"]
