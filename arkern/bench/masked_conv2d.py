"""Benchmark cases for masked_conv2d: PixelCNN layers, C++ kernel vs the reference (oneDNN conv2d on W * M)."""

from __future__ import annotations

import torch

from arkern.bench.harness import Case
from arkern.ops import masked_conv2d

PROVIDERS = ("reference", "cpu")


def _layer(n: int, cin: int, cout: int, k: int, mask_type: str, groups: int = 1, size: int = 32,
           backward: bool = False) -> Case:
    """One masked conv layer on (n, cin, size, size) float32; with `backward`, forward + backward (all grads)."""
    def setup():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, cin, size, size, generator=g).requires_grad_(backward)
        w = (torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5).requires_grad_(backward)
        b = torch.randn(cout, generator=g).requires_grad_(backward)
        grad = torch.randn(n, cout, size, size, generator=g)

        def run(provider: str):
            if not backward:
                with torch.no_grad():
                    return masked_conv2d(x, w, b, mask_type, groups, backend=provider)
            y = masked_conv2d(x, w, b, mask_type, groups, backend=provider)
            return torch.autograd.grad(y, (x, w, b), grad)

        return {p: (lambda p=p: run(p)) for p in PROVIDERS}

    what = "fwd+bwd" if backward else "fwd"
    rgb = f" G={groups}" if groups > 1 else ""
    name = f"{what} {mask_type} {k}x{k} N={n} {cin}->{cout}{rgb} {size}x{size} fp32"
    return Case("masked_conv2d", name, setup,
                params=dict(dtype="float32", n=n, cin=cin, cout=cout, k=k, mask_type=mask_type, groups=groups,
                            size=size, backward=backward))


def cases(quick: bool = False) -> list[Case]:
    """Standard configurations: the forward targets (mask B, 7x7 and 3x3, C = 64 and 128, N = 16, 32x32),
    the mask-A input layer, and a training step (forward + backward). The quick set is a subset."""
    out = [_layer(16, 64, 64, 7, "B"), _layer(16, 64, 64, 3, "B"), _layer(16, 1, 64, 7, "A")]
    if not quick:
        out += [_layer(16, 128, 128, 7, "B"), _layer(16, 128, 128, 3, "B"), _layer(16, 3, 96, 7, "A", groups=3),
                _layer(16, 64, 64, 3, "B", backward=True), _layer(16, 64, 64, 7, "B", backward=True)]
    return out
