"""Reference PixelCNN masked convolution: y = conv2d(x, weight * mask, bias), "same" padding, stride 1.

Written as a sum over the kernel taps that the mask keeps, each tap a channel contraction of the input
shifted by the tap's offset. Masked taps are *selected away*, never multiplied by zero: 0 * NaN is NaN,
so a dense conv with a zeroed weight would let a non-finite future pixel reach earlier outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arkern.masks import pixelcnn_mask


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """xs[..., i, j] = x[..., i + dy, j + dx], zero outside the image (|dy| < H, |dx| < W)."""
    return F.pad(x, (-dx, dx, -dy, dy))  # negative padding crops


def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask_type: str,
                  color_groups: int = 1, dilation: int = 1) -> torch.Tensor:
    """x (N, Cin, H, W), weight (Cout, Cin, kH, kW) with kH, kW odd, bias (Cout,) or None -> (N, Cout, H, W).

    y[n, o, i, j] = bias[o] + sum_{c, a, b : mask[o, c, a, b]} weight[o, c, a, b]
                    * x[n, c, i + (a - kH//2) * dilation, j + (b - kW//2) * dilation]
    with x zero outside the image and mask = :func:`arkern.masks.pixelcnn_mask` (rows above, left of the
    centre, and the colour rule at the centre tap). Masked weights therefore get exactly zero gradient,
    and taps that fall wholly outside the image cost nothing.
    """
    n, _, h, w = x.shape
    cout, cin, kh, kw = weight.shape
    mask = pixelcnn_mask(cout, cin, (kh, kw), mask_type, color_groups, device=weight.device)
    y = x.new_zeros((n, cout, h, w))
    for a in range(kh):
        for b in range(kw):
            dy, dx = (a - kh // 2) * dilation, (b - kw // 2) * dilation
            if (dy or dx) and (abs(dy) >= h or abs(dx) >= w or not mask[:, :, a, b].any()):
                continue  # the tap reads only zero padding, or the mask drops it for every channel pair
            xs = shifted(x, dy, dx)
            # output channels sharing one mask row (all of them off the centre tap) contract over its inputs
            # (the centre tap is always kept: with no input left it still links y to x and weight, with
            # zero gradient, like the kernels)
            for row in mask[:, :, a, b].unique(dim=0):
                outs = (mask[:, :, a, b] == row).all(dim=1).nonzero().flatten()
                ins = row.nonzero().flatten()
                part = torch.einsum("oc,nchw->nohw", weight[outs][:, ins, a, b], xs[:, ins])
                y = y.index_add(1, outs, part)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y
