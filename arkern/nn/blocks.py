"""Blocks the autoregressive models are built from, beside the conv layers: residual wrapper, row / column
shifts, the gated unit and concat_elu. Plain modules (no decoding state); their cached-decoding views are in
:mod:`arkern.decode.incremental`. Gate and ConcatELU act on every pixel alone (``arkern_pointwise``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Residual", "DownShift", "RightShift", "Gate", "ConcatELU"]


class Residual(nn.Module):
    """y = x + body(x). Shapes: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DownShift(nn.Module):
    """Shift a map down by one row (zero first row): y[..., i, :] = x[..., i-1, :]. (N,C,H,W) -> same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 1, 0))[..., :-1, :]


class RightShift(nn.Module):
    """Shift a map right by one column (zero first column): y[..., j] = x[..., j-1]. (N,C,H,W) -> same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (1, 0))[..., :-1]


class Gate(nn.Module):
    """Gated unit tanh(a) * sigmoid(b), channel-split per colour group.

    The 2C input channels form `groups` contiguous blocks; in each block the first half is `a`, the
    second half `b`, so output group g depends only on input group g (colour causality is kept).
    Shapes: (N, 2C, ...) -> (N, C, ...).
    """

    arkern_pointwise = True

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c2 = x.shape[:2]
        if c2 % (2 * self.groups):
            raise ValueError(f"Gate: channels ({c2}) must be divisible by 2 * groups ({2 * self.groups})")
        v = x.reshape(n, self.groups, 2, c2 // (2 * self.groups), *x.shape[2:])
        return (torch.tanh(v[:, :, 0]) * torch.sigmoid(v[:, :, 1])).reshape(n, c2 // 2, *x.shape[2:])


class ConcatELU(nn.Module):
    """concat_elu of PixelCNN++: elu(cat([x, -x], channel)). Shapes: (N, C, ...) -> (N, 2C, ...)."""

    arkern_pointwise = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(torch.cat([x, -x], dim=1))
