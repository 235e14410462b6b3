"""MaskedLinear: nn.Linear whose weight is masked by MADE degrees (drop-in for nn.Linear)."""

from __future__ import annotations

import torch
from torch import nn

from arkern.masks import made_mask
from arkern.ops.masked_linear import masked_linear


class MaskedLinear(nn.Linear):
    """nn.Linear with a fixed connectivity mask; same state_dict keys as nn.Linear plus the `mask` buffer.

    Args:
        in_features, out_features, bias, device, dtype: as nn.Linear.
        mask: (out_features, in_features) bool, or None for all-ones (set it later with :meth:`set_mask`
            or :meth:`set_degrees`).
        backend: force an arkern backend for this layer (None picks the fastest available).

    Shapes: x (..., in_features) -> (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 mask: torch.Tensor | None = None, backend: str | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.backend = backend
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device),
                             persistent=False)
        if mask is not None:
            self.set_mask(mask)

    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the connectivity mask: (out_features, in_features), bool."""
        if mask.shape != self.weight.shape:
            raise ValueError(f"MaskedLinear.set_mask: mask must have shape {tuple(self.weight.shape)}, "
                             f"got {tuple(mask.shape)}")
        self.mask.copy_(mask.to(torch.bool))

    def set_degrees(self, in_degrees: torch.Tensor, out_degrees: torch.Tensor, *, strict: bool = False) -> None:
        """Set the MADE mask from unit degrees (see :func:`arkern.masks.made_mask`)."""
        self.set_mask(made_mask(in_degrees, out_degrees, strict=strict))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_linear(x, self.weight, self.bias, self.mask, backend=self.backend)
