"""Benchmark cases for masked_linear: MADE layers, C++ kernel vs the reference (F.linear on W * M)."""

from __future__ import annotations

import torch

from arkern.bench.harness import Case
from arkern.masks import made_mask
from arkern.ops import masked_linear


def _made_layer(n: int, fin: int, fout: int, d: int):
    def setup():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, fin, generator=g)
        w = torch.randn(fout, fin, generator=g)
        b = torch.randn(fout, generator=g)
        deg_in = torch.arange(fin) % d + 1
        deg_out = torch.arange(fout) % (d - 1) + 1
        mask = made_mask(deg_in, deg_out)
        return {p: (lambda p=p: masked_linear(x, w, b, mask, backend=p)) for p in ("reference", "cpu")}
    return Case("masked_linear", f"MADE N={n} {fin}->{fout} fp32", setup)


def cases(quick: bool = False) -> list[Case]:
    """Standard configurations (the quick set is a subset)."""
    out = [_made_layer(64, 784, 512, 784)]
    if not quick:
        out.append(_made_layer(256, 512, 512, 512))
    return out
