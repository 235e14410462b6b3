"""Reference masked linear layer (MADE): y = x @ (weight * mask)^T + bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  mask: torch.Tensor) -> torch.Tensor:
    """x (..., in), weight (out, in), bias (out,) or None, mask (out, in) bool -> (..., out)."""
    return F.linear(x, weight * mask.to(weight.dtype), bias)
