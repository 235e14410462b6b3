"""Reference PixelCNN++ shifted (causal) convolutions: zero-pad so that every output only sees the past,
then an ordinary VALID convolution; and the transposed (upsampling) variant cropped as in PixelCNN++.

shift='down'      (down_shifted_conv2d):       pad top kH-1, left and right (kW-1)//2, bottom 0.
                  Output (i, j) sees input rows <= i (and every column within (kW-1)//2 of j).
shift='downright' (down_right_shifted_conv2d): pad top kH-1, left kW-1.
                  Output (i, j) sees input rows <= i and columns <= j.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHIFTS = ("down", "downright")


def shift_padding(shift: str, kernel_w: int, kernel_h: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding of a shifted conv, in F.pad order."""
    if shift == "down":
        return (kernel_w - 1) // 2, (kernel_w - 1) // 2, kernel_h - 1, 0
    return kernel_w - 1, 0, kernel_h - 1, 0


def transpose_crop_left(shift: str, kernel_w: int) -> int:
    """First column kept from the full transposed-conv output ('down' crops (kW-1)//2 on both sides)."""
    return (kernel_w - 1) // 2 if shift == "down" else 0


def shifted_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shift: str,
                   stride: int = 1) -> torch.Tensor:
    """x (N, Cin, H, W), weight (Cout, Cin, kH, kW), bias (Cout,) or None
    -> (N, Cout, ceil(H / stride), ceil(W / stride)).

    y = conv2d(pad(x, shift_padding), weight, bias, stride): with top padding kH-1 and no bottom
    padding, output row i reads input rows i*stride - (kH-1) .. i*stride, never a later one.
    """
    kh, kw = weight.shape[-2:]
    return F.conv2d(F.pad(x, shift_padding(shift, kw, kh)), weight, bias, stride=stride)


def shifted_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shift: str,
                             stride: int = 2) -> torch.Tensor:
    """x (N, Cin, H, W), weight (Cin, Cout, kH, kW) as nn.ConvTranspose2d, bias (Cout,) or None
    -> (N, Cout, H * stride, W * stride).

    The full transposed conv (output_padding = stride - 1) is (H*stride + kH - 1, W*stride + kW - 1);
    PixelCNN++ keeps rows [0, H*stride) (dropping the bottom kH-1, which would see later input rows)
    and columns [(kW-1)//2, ...) for 'down' or [0, W*stride) for 'downright'.
    Input (r, c) lands on outputs (r*stride + kh, c*stride + kw - crop), so output (i, j) only sees
    input rows <= i // stride (and for 'downright' columns <= j // stride).
    """
    kw = weight.shape[-1]
    h, w = x.shape[-2:]
    full = F.conv_transpose2d(x, weight, bias, stride=stride, output_padding=stride - 1)
    left = transpose_crop_left(shift, kw)
    return full[:, :, : h * stride, left: left + w * stride]
