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


def pixelcnn_mask(out_channels: int, in_channels: int, kernel_size: int | tuple[int, int], mask_type: str,
                  color_groups: int = 1, *, dtype: torch.dtype = torch.bool,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """PixelCNN mask (van den Oord et al. 2016), shape (out_channels, in_channels, kH, kW).

    Taps in rows above the centre row and left of the centre in the centre row are on; taps right of
    the centre and in rows below are off. At the centre tap, with G = color_groups contiguous channel
    blocks (channel c of C is in group ``c // (C // G)``), input group gi feeds output group go iff
    gi < go (mask 'A') or gi <= go (mask 'B'). kH and kW must be odd. Returns bool by default; pass a
    floating `dtype` for a 0/1 mask to multiply weights with.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"pixelcnn_mask: kernel_size must be odd in both dimensions, got {(kh, kw)}")
    if mask_type not in ("A", "B"):
        raise ValueError(f"pixelcnn_mask: mask_type must be 'A' or 'B', got {mask_type!r}")
    if color_groups < 1 or out_channels % color_groups or in_channels % color_groups:
        raise ValueError(f"pixelcnn_mask: color_groups={color_groups} must divide in_channels={in_channels} "
                         f"and out_channels={out_channels}")
    mask = torch.zeros(out_channels, in_channels, kh, kw, dtype=torch.bool, device=device)
    mask[:, :, : kh // 2, :] = True  # rows above the centre
    mask[:, :, kh // 2, : kw // 2] = True  # centre row, left of the centre
    go = torch.arange(out_channels, device=device) // (out_channels // color_groups)
    gi = torch.arange(in_channels, device=device) // (in_channels // color_groups)
    mask[:, :, kh // 2, kw // 2] = (gi[None, :] < go[:, None]) if mask_type == "A" else (gi[None, :] <= go[:, None])
    return mask.to(dtype)
