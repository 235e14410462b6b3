"""Benchmark cases for the categorical draw of the fused CPU samplers (``torch.ops.arkern._categorical_draw``,
csrc/cpu/decode_sampler.h) against its reference, :func:`arkern.distributions.sample_categorical`.

Providers: "reference" (torch ops, float64), "cpu-float64" (the kernel's float64 steps for every row) and "cpu"
(the kernel as the samplers run it: a float32 pre-pass that settles almost every row, the float64 steps for
the rest). Every provider draws the same classes; items are draws.
"""

from __future__ import annotations

import torch

from arkern._ext import load_extension
from arkern.bench.harness import Case
from arkern.distributions import sample_categorical


def _draw_case(rows: int, classes: int, scale: float) -> Case:
    def setup():
        g = torch.Generator().manual_seed(0)
        logits = (torch.randn(rows, classes, generator=g) * scale).float()
        u = torch.rand(rows, dtype=torch.float64, generator=g)
        fns = {"reference": lambda: sample_categorical(logits, u)}
        if load_extension() is None:
            draw = torch.ops.arkern._categorical_draw
            fns["cpu-float64"] = lambda: draw(logits, u, 1.0, 0, 1.0, False)
            fns["cpu"] = lambda: draw(logits, u, 1.0, 0, 1.0, True)
        return fns

    return Case("categorical", f"draw {rows}x{classes} logits N(0, {scale:g}^2) fp32", setup, items=rows,
                params={"rows": rows, "classes": classes})


def cases(quick: bool = False) -> list[Case]:
    """A batch-64 step of a 256-class sampler; the full set adds 16k rows (a 32x32 batch-16 image's draws)."""
    out = [_draw_case(64, 256, 3.0)]
    if not quick:
        out.append(_draw_case(16384, 256, 3.0))
    return out
