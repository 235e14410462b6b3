"""Reference PixelCNN masked convolution: y = conv2d(x, weight * mask, bias), "same" padding, stride 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arkern.masks import pixelcnn_mask


def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask_type: str,
                  color_groups: int = 1, dilation: int = 1) -> torch.Tensor:
    """x (N, Cin, H, W), weight (Cout, Cin, kH, kW) with kH, kW odd, bias (Cout,) or None -> (N, Cout, H, W).

    y[n, o, i, j] = bias[o] + sum_{c, a, b} (weight * mask)[o, c, a, b]
                    * x[n, c, i + (a - kH//2) * dilation, j + (b - kW//2) * dilation]
    with x zero outside the image and mask = :func:`arkern.masks.pixelcnn_mask` (rows above, left of the
    centre, and the colour rule at the centre tap). Masked weights therefore get exactly zero gradient.
    """
    cout, cin, kh, kw = weight.shape
    mask = pixelcnn_mask(cout, cin, (kh, kw), mask_type, color_groups, dtype=weight.dtype, device=weight.device)
    padding = ((kh // 2) * dilation, (kw // 2) * dilation)
    return F.conv2d(x, weight * mask, bias, padding=padding, dilation=dilation)
