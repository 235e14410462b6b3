"""ShiftedConv2d / ShiftedConvTranspose2d: PixelCNN++'s down(-right) shifted convolutions as layers.

Drop-in for nn.Conv2d / nn.ConvTranspose2d (subclasses, same parameters and state_dict keys), computed
with :func:`arkern.ops.shifted_conv2d` and :func:`arkern.ops.shifted_conv_transpose2d`.
"""

from __future__ import annotations

import torch
from torch import nn

from arkern.ops.shifted_conv2d import SHIFTS, STRIDES, shifted_conv2d, shifted_conv_transpose2d
from arkern.reference.shifted_conv2d import shifted_conv2d as reference_shifted_conv2d


def _check_args(layer: str, in_channels: object, out_channels: object, kernel_size: object, shift: object,
                stride: object) -> tuple[tuple[int, int], int]:
    """Validate layer arguments; returns ((kH, kW), stride). Raises ValueError naming the argument."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)  # type: ignore[arg-type]
    if len(ks) != 2 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"{layer}: kernel_size must be a positive int or a pair (kH, kW), got {kernel_size!r}")
    if shift not in SHIFTS:
        raise ValueError(f"{layer}: shift must be one of {SHIFTS}, got {shift!r}")
    if shift == "down" and ks[1] % 2 == 0:
        raise ValueError(f"{layer}: shift 'down' needs an odd kernel width, got kernel_size {ks}")
    st = (stride, stride) if isinstance(stride, int) else tuple(stride)  # type: ignore[arg-type]
    if len(st) != 2 or st[0] != st[1] or st[0] not in STRIDES or isinstance(st[0], bool):
        raise ValueError(f"{layer}: stride must be 1 or 2 (the same in both dimensions), got {stride!r}")
    return (ks[0], ks[1]), st[0]


class ShiftedConv2d(nn.Conv2d):
    """nn.Conv2d with PixelCNN++ causal padding: output (i, j) sees only input rows <= i (and for
    shift='downright' columns <= j). Same parameters and state_dict keys as nn.Conv2d with padding 0.

    Args:
        in_channels, out_channels, bias, device, dtype: as nn.Conv2d.
        kernel_size: (kH, kW), default (2, 3); kW must be odd for shift='down'.
        shift: 'down' or 'downright'.
        stride: 1 or 2.
        backend: force an arkern backend for this layer (None picks the fastest available).

    Set the `dense` attribute to True to train fast: the reference's padded ``F.conv2d`` without the op's
    checks (oneDNN forward and backward, runs under ``torch.autocast``, mixed dtypes allowed).

    Shapes: x (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = (2, 3),
                 shift: str = "down", stride: int = 1, bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, backend: str | None = None) -> None:
        ks, st = _check_args(type(self).__name__, in_channels, out_channels, kernel_size, shift, stride)
        super().__init__(in_channels, out_channels, ks, stride=st, padding=0, bias=bias, device=device, dtype=dtype)
        self.shift = shift
        self.backend = backend
        self.dense = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return reference_shifted_conv2d(x, self.weight, self.bias, self.shift, self.stride[0])
        return shifted_conv2d(x, self.weight, self.bias, self.shift, self.stride[0], backend=self.backend)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", shift={self.shift!r}"


class ShiftedConvTranspose2d(nn.ConvTranspose2d):
    """PixelCNN++ up-path transposed conv: nn.ConvTranspose2d(stride, output_padding=stride-1) cropped so
    that output (i, j) sees only input rows <= i // stride (and for 'downright' columns <= j // stride).
    Same parameters and state_dict keys as nn.ConvTranspose2d.

    Args:
        in_channels, out_channels, bias, device, dtype: as nn.ConvTranspose2d.
        kernel_size: (kH, kW), default (2, 3); kW must be odd for shift='down'.
        shift: 'down' or 'downright'.
        stride: 1 or 2 (default 2).
        backend: force an arkern backend for this layer (None picks the fastest available).

    Shapes: x (N, in_channels, H, W) -> (N, out_channels, H * stride, W * stride).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = (2, 3),
                 shift: str = "down", stride: int = 2, bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, backend: str | None = None) -> None:
        ks, st = _check_args(type(self).__name__, in_channels, out_channels, kernel_size, shift, stride)
        super().__init__(in_channels, out_channels, ks, stride=st, padding=0, output_padding=st - 1, bias=bias,
                         device=device, dtype=dtype)
        self.shift = shift
        self.backend = backend

    def extra_repr(self) -> str:
        return super().extra_repr() + f", shift={self.shift!r}"

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None:
            raise ValueError(f"{type(self).__name__}: output_size is fixed to (H * stride, W * stride); "
                             f"pass output_size=None")
        return shifted_conv_transpose2d(x, self.weight, self.bias, self.shift, self.stride[0], backend=self.backend)
