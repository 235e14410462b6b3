"""Masks of the masked layers, as tensors (the reference ops multiply by them; kernels skip their zeros)."""

from __future__ import annotations

import torch


def made_mask(in_degrees: torch.Tensor, out_degrees: torch.Tensor, *, strict: bool = False) -> torch.Tensor:
    """MADE connectivity mask (Germain et al. 2015), shape (out_features, in_features), dtype bool.

    Unit k of the layer may see input d iff out_degrees[k] >= in_degrees[d] (hidden layers), or
    out_degrees[k] > in_degrees[d] with ``strict=True`` (the output layer, so output d never sees input d).
    """
    if in_degrees.dim() != 1 or out_degrees.dim() != 1:
        raise ValueError("made_mask: in_degrees and out_degrees must be 1-D, got shapes "
                         f"{tuple(in_degrees.shape)} and {tuple(out_degrees.shape)}")
    o, i = out_degrees[:, None], in_degrees[None, :]
    return o > i if strict else o >= i
