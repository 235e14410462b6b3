"""Benchmark cases for shifted_conv2d: PixelCNN++-like layers, C++ kernels vs the reference
(F.pad + F.conv2d, and F.conv_transpose2d + crop), forward and forward + backward."""

from __future__ import annotations

import torch

from arkern.bench.harness import Case
from arkern.ops import shifted_conv2d, shifted_conv_transpose2d

PROVIDERS = ("reference", "cpu")


def _layer(kind: str, n: int, c: int, hw: int, k: tuple[int, int], shift: str, stride: int,
           train: bool = False, dtype: torch.dtype = torch.float32) -> Case:
    fn = shifted_conv2d if kind == "conv" else shifted_conv_transpose2d

    def setup():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, hw, hw, generator=g, dtype=dtype)
        w = torch.randn(c, c, *k, generator=g, dtype=dtype) * 0.05
        b = torch.randn(c, generator=g, dtype=dtype)
        if not train:
            return {p: (lambda p=p: fn(x, w, b, shift, stride, backend=p)) for p in PROVIDERS}
        xs, ws, bs = (t.requires_grad_() for t in (x, w, b))
        gy = torch.randn_like(fn(xs, ws, bs, shift, stride, backend="reference"))

        def step(p):
            y = fn(xs, ws, bs, shift, stride, backend=p)
            return torch.autograd.grad(y, (xs, ws, bs), gy)
        return {p: (lambda p=p: step(p)) for p in PROVIDERS}

    what = "fwd+bwd" if train else "fwd"
    name = f"{kind} {shift} {k[0]}x{k[1]} s{stride} N={n} C={c} {hw}x{hw} {what} {str(dtype)[6:]}"
    return Case("shifted_conv2d", name, setup, params={"dtype": str(dtype)[6:], "batch": n})


def cases(quick: bool = False) -> list[Case]:
    """Standard configurations: PixelCNN++ (C=80) layers at 32x32 and 16x16 (the quick set is a subset)."""
    out = [
        _layer("conv", 16, 80, 32, (2, 3), "down", 1),
        _layer("conv", 16, 80, 32, (2, 2), "downright", 1),
        _layer("conv", 16, 80, 32, (2, 3), "down", 2),
        _layer("transpose", 16, 80, 16, (2, 3), "down", 2),
        _layer("conv", 16, 80, 32, (2, 3), "down", 1, train=True),
    ]
    if not quick:
        out += [
            _layer("conv", 16, 80, 16, (2, 3), "down", 1),
            _layer("conv", 16, 80, 16, (2, 2), "downright", 1),
            _layer("conv", 16, 80, 32, (2, 2), "downright", 2),
            _layer("transpose", 16, 80, 16, (2, 2), "downright", 2),
            _layer("transpose", 16, 80, 8, (2, 3), "down", 2),
            _layer("conv", 16, 80, 32, (2, 2), "downright", 1, train=True),
            _layer("transpose", 16, 80, 16, (2, 3), "down", 2, train=True),
        ]
    return out
