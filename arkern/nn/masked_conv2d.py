"""MaskedConv2d: the PixelCNN masked convolution as a drop-in nn.Conv2d (same state_dict keys)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arkern.masks import pixelcnn_mask
from arkern.ops.masked_conv2d import MASK_TYPES, masked_conv2d


class MaskedConv2d(nn.Conv2d):
    """nn.Conv2d whose kernel is masked PixelCNN-style; forward runs ``arkern.ops.masked_conv2d``.

    Args:
        in_channels, out_channels, kernel_size, dilation, bias, device, dtype: as nn.Conv2d; kernel sizes
            must be odd.
        mask_type: "A" (first layer: a pixel does not see itself) or "B" (later layers).
        color_groups: colour channel groups (3 for RGB), must divide both channel counts.
        stride, padding, groups, padding_mode: accepted for drop-in compatibility with nn.Conv2d, but only
            stride=1, padding="same" (or the equivalent (k // 2) * dilation), groups=1 and
            padding_mode="zeros" are supported; anything else raises ValueError here.

    Shapes: x (N, in_channels, H, W) -> (N, out_channels, H, W). Parameters are stored unmasked (so
    nn.Conv2d checkpoints load); masked entries never influence the output and get zero gradient.
    Set the `backend` attribute to force an arkern backend (None picks the fastest available). Set `dense`
    to True to train fast: one ``F.conv2d`` with ``weight * mask`` (oneDNN forward and backward, runs under
    ``torch.autocast``, any dtype). Same values on finite inputs, but not NaN-safe: a masked tap is multiplied
    by zero, not skipped, so a non-finite future pixel would reach the output.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 mask_type: str = "B", color_groups: int = 1, stride: int | tuple[int, int] = 1,
                 padding: str | int | tuple[int, int] = "same", dilation: int | tuple[int, int] = 1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        kh, kw = _pair("kernel_size", kernel_size)
        dil = _pair("dilation", dilation)
        if kh % 2 == 0 or kw % 2 == 0 or kh < 1 or kw < 1:
            raise ValueError(f"MaskedConv2d: kernel_size must be odd in both dimensions, got {(kh, kw)}")
        if mask_type not in MASK_TYPES:
            raise ValueError(f"MaskedConv2d: mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        if _pair("stride", stride) != (1, 1):
            raise ValueError(f"MaskedConv2d: only stride=1 is supported, got stride={stride!r}")
        if dil[0] != dil[1] or dil[0] < 1:
            raise ValueError(f"MaskedConv2d: dilation must be one int >= 1 for both dimensions, got {dilation!r}")
        same = ((kh // 2) * dil[0], (kw // 2) * dil[0])
        if padding != "same" and _pair("padding", padding) != same:
            raise ValueError(f"MaskedConv2d: only 'same' padding is supported ({same} for this kernel and "
                             f"dilation), got padding={padding!r}")
        if groups != 1:
            raise ValueError(f"MaskedConv2d: only groups=1 is supported, got groups={groups}")
        if padding_mode != "zeros":
            raise ValueError(f"MaskedConv2d: only padding_mode='zeros' is supported, got {padding_mode!r}")
        if color_groups < 1 or in_channels % color_groups or out_channels % color_groups:
            raise ValueError(f"MaskedConv2d: color_groups={color_groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        super().__init__(in_channels, out_channels, (kh, kw), stride=1, padding=same, dilation=dil[0], groups=1,
                         bias=bias, padding_mode="zeros", device=device, dtype=dtype)
        self.mask_type = mask_type
        self.color_groups = color_groups
        self.backend: str | None = None
        self.dense = False

    def mask(self) -> torch.Tensor:
        """The (out_channels, in_channels, kH, kW) bool mask this layer applies."""
        return pixelcnn_mask(self.out_channels, self.in_channels, self.kernel_size, self.mask_type,
                             self.color_groups, device=self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return F.conv2d(x, self.weight * self.mask().to(self.weight.dtype), self.bias, padding=self.padding,
                            dilation=self.dilation)
        return masked_conv2d(x, self.weight, self.bias, self.mask_type, self.color_groups, self.dilation[0],
                             backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}, color_groups={self.color_groups}"


def _pair(name: str, value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"MaskedConv2d: {name} must be an int or a pair of ints, got {value!r}")


def masked_conv_mask(layer: nn.Module) -> torch.Tensor:
    """The (Cout, Cin, kH, kW) bool mask of an ``arkern.nn.MaskedConv2d`` (from its `mask()` if it has one)."""
    mask = getattr(layer, "mask", None)
    mask = mask() if callable(mask) else mask
    if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(layer.weight.shape):
        return mask.to(torch.bool)
    return pixelcnn_mask(layer.out_channels, layer.in_channels, tuple(layer.kernel_size),
                                layer.mask_type, layer.color_groups).to(torch.bool)
