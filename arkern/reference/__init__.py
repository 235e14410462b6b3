"""Pure-PyTorch references: the ground truth for tests and the baseline for benchmarks."""
