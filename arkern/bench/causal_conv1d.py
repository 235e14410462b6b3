"""Benchmark cases for causal_conv1d: C++ kernels vs the reference (F.conv1d on the left-padded input, and
the roll + multiply-sum decode step), float32."""

from __future__ import annotations

import torch

from arkern.bench.harness import Case
from arkern.ops import causal_conv1d, causal_conv1d_update

PROVIDERS = ("reference", "cpu")


def _conv(B: int, C: int, T: int, K: int, dilation: int, depthwise: bool) -> Case:
    groups = C if depthwise else 1
    kind = "depthwise" if depthwise else "dense"

    def setup():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, C, T, generator=g)
        w = torch.randn(C, C // groups, K, generator=g) / (C // groups * K) ** 0.5
        b = torch.randn(C, generator=g)
        return {p: (lambda p=p: causal_conv1d(x, w, b, dilation, groups, backend=p)) for p in PROVIDERS}

    return Case("causal_conv1d", f"{kind} B={B} C={C} T={T} K={K} d={dilation} fp32", setup,
                params={"dtype": "float32", "batch": B})


def _update(B: int, C: int, K: int) -> Case:
    def setup():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, C, generator=g)
        w = torch.randn(C, 1, K, generator=g) / K ** 0.5
        b = torch.randn(C, generator=g)
        states = {p: torch.randn(B, C, K - 1, generator=g) for p in PROVIDERS}
        return {p: (lambda p=p: causal_conv1d_update(x, states[p], w, b, 1, C, "silu", backend=p))
                for p in PROVIDERS}

    return Case("causal_conv1d", f"update depthwise B={B} C={C} K={K} silu fp32", setup, items=B,
                params={"dtype": "float32", "batch": B})


def _update_ring(B: int, cin: int, cout: int, dilation: int) -> Case:
    """A WaveNet layer's decode step: dense K=2 dilated conv on a ring buffer of `dilation` past inputs."""
    def setup():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, cin, generator=g)
        w = torch.randn(cout, cin, 2, generator=g) / (2 * cin) ** 0.5
        b = torch.randn(cout, generator=g)
        states = {p: torch.randn(B, cin, dilation, generator=g) for p in PROVIDERS}
        seq = torch.full((B,), 1000, dtype=torch.int32)
        return {p: (lambda p=p: causal_conv1d_update(x, states[p], w, b, dilation, 1, None, seq, backend=p))
                for p in PROVIDERS}

    return Case("causal_conv1d", f"update ring dense B={B} {cin}->{cout} K=2 d={dilation} fp32", setup, items=B,
                params={"dtype": "float32", "batch": B})


def cases(quick: bool = False) -> list[Case]:
    """Standard configurations (the quick set is a subset)."""
    out = [_conv(1, 8192, 1024, 4, 1, True), _update(64, 2048, 4), _conv(4, 128, 4096, 2, 8, False)]
    if not quick:
        out += [_conv(4, 2048, 4096, 4, 1, True)]
        out += [_conv(4, 128, 4096, 2, d, False) for d in (1, 64, 512)]
        out += [_update_ring(16, 64, 128, 512)]
    return out
