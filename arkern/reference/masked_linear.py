"""Reference masked linear layer (MADE): y = x @ (weight * mask)^T + bias.

Masked entries are *selected away*, never multiplied by zero: 0 * NaN is NaN, so a zeroed weight would
let a non-finite input reach the outputs that must not see it.
"""

from __future__ import annotations

import torch


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  mask: torch.Tensor) -> torch.Tensor:
    """x (..., in), weight (out, in), bias (out,) or None, mask (out, in) bool -> (..., out).

    y[..., o] = bias[o] + sum_{i : mask[o, i]} weight[o, i] * x[..., i]; outputs that share a mask row
    are computed together from the inputs that row keeps.
    """
    y = x.new_zeros((*x.shape[:-1], weight.shape[0]))
    for row in mask.unique(dim=0):
        outs = (mask == row).all(dim=1).nonzero().flatten()
        ins = row.nonzero().flatten()
        y = y.index_add(-1, outs, x[..., ins] @ weight[outs][:, ins].T)  # an all-False row adds zeros
    if bias is not None:
        y = y + bias
    return y
