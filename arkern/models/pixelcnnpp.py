"""PixelCNN++ (Salimans et al. 2017): down- and down-right-shifted convs, gated resnet blocks with
concat_elu, two stride-2 down-samplings and up-samplings with skip connections, and a discretized
logistic mixture output (RGB channels coupled inside the mixture, so one draw per pixel).

Layout follows the reference implementation (openai/pixel-cnn): an up pass over three scales
(H, H/2, H/4) of a `u` stream (sees rows above) and a `ul` stream (rows above and pixels to the left),
then a down pass that consumes the up pass's outputs as auxiliary inputs.

Cached decoding (:class:`arkern.decode.pixelcnnpp.PixelCNNppDecoder`, the schedule of Ramachandran et al.
2017): the `u` stream only sees rows above, so all of it is computed once per row (level-1 rows on even rows,
level-2 rows on rows divisible by 4); the `ul` stream is computed once per pixel at full resolution, and the
stride-2 down/up-sampled layers run only at the pixels where they produce a new output ((2r, 2c) for level 1,
(4q, 4p) for level 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

import arkern.nn as ann
from arkern.distributions import (
    dequantize,
    discretized_logistic_mixture_log_prob,
    mixture_params_size,
    quantize,
    sample_discretized_logistic_mixture,
)
from arkern.nn import ConcatELU, DownShift, RightShift


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv(concat_elu(conv(concat_elu(x)) + nin(concat_elu(aux)))).

    `conv` builds a shape-preserving shifted conv (cin, cout). Shapes: x (N, C, H, W), aux (N, Ca, H, W)
    or None -> (N, C, H, W).
    """

    def __init__(self, channels: int, conv: Callable[[int, int], nn.Module], aux_channels: int = 0,
                 dropout: float = 0.0, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.elu = ConcatELU()
        self.conv_in = conv(2 * channels, channels)
        self.nin_aux = nn.Conv2d(2 * aux_channels, channels, 1, device=device, dtype=dtype) if aux_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv(2 * channels, 2 * channels)

    def forward(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        c = self.conv_in(self.elu(x))
        if self.nin_aux is not None:
            c = c + self.nin_aux(self.elu(aux))
        a, b = self.conv_out(self.dropout(self.elu(c))).chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


class PixelCNNpp(nn.Module):
    """PixelCNN++.

    Args:
        image_channels: C (3 for RGB, 1 for grey).
        num_bins: levels per channel (256).
        filters: channels of both streams; num_resnets: gated resnets per scale in the up pass (the down
            pass has one more per scale, as in the reference); num_mixtures: logistic components.
        dropout: inside the gated resnets (training only).

    Shapes: forward(x (N, C, H, W) int levels in [0, num_bins)) -> (N, P, H, W) mixture parameters,
    P = 10 * num_mixtures for RGB. H and W must be divisible by 4 (two 2x down-samplings).
    """

    def __init__(self, image_channels: int = 3, num_bins: int = 256, filters: int = 80, num_resnets: int = 5,
                 num_mixtures: int = 10, dropout: float = 0.0, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if image_channels < 1 or num_bins < 2 or filters < 1 or num_resnets < 0 or num_mixtures < 1:
            raise ValueError(f"PixelCNNpp: invalid sizes image_channels={image_channels}, num_bins={num_bins}, "
                             f"filters={filters}, num_resnets={num_resnets}, num_mixtures={num_mixtures}")
        self.image_channels, self.num_classes, self.num_mixtures = image_channels, num_bins, num_mixtures
        f = filters
        kw = {"device": device, "dtype": dtype}
        down = lambda cin, cout, stride=1: ann.ShiftedConv2d(cin, cout, (2, 3), shift="down", stride=stride, **kw)
        downright = lambda cin, cout, stride=1: ann.ShiftedConv2d(cin, cout, (2, 2), shift="downright",
                                                                  stride=stride, **kw)
        cin = image_channels + 1  # + a channel of ones, so the zero padding is visible at the borders
        self.u_init = down(cin, f)
        self.ul_init_down = ann.ShiftedConv2d(cin, f, (1, 3), shift="down", **kw)
        self.ul_init_right = ann.ShiftedConv2d(cin, f, (2, 1), shift="downright", **kw)
        self.down_shift, self.right_shift = DownShift(), RightShift()
        res = lambda conv, aux: GatedResnet(f, conv, aux, dropout, **kw)
        self.up_u = nn.ModuleList([nn.ModuleList([res(down, 0) for _ in range(num_resnets)]) for _ in range(3)])
        self.up_ul = nn.ModuleList([nn.ModuleList([res(downright, f) for _ in range(num_resnets)])
                                    for _ in range(3)])
        self.down_u = nn.ModuleList([down(f, f, 2) for _ in range(2)])
        self.down_ul = nn.ModuleList([downright(f, f, 2) for _ in range(2)])
        n_down = [num_resnets, num_resnets + 1, num_resnets + 1]  # consumes every up-pass output once
        self.dn_u = nn.ModuleList([nn.ModuleList([res(down, f) for _ in range(n)]) for n in n_down])
        self.dn_ul = nn.ModuleList([nn.ModuleList([res(downright, 2 * f) for _ in range(n)]) for n in n_down])
        self.up_sample_u = nn.ModuleList([ann.ShiftedConvTranspose2d(f, f, (2, 3), shift="down", stride=2, **kw)
                                          for _ in range(2)])
        self.up_sample_ul = nn.ModuleList([ann.ShiftedConvTranspose2d(f, f, (2, 2), shift="downright", stride=2,
                                                                      **kw) for _ in range(2)])
        self.out = nn.Conv2d(f, mixture_params_size(image_channels, num_mixtures), 1, **kw)
        self.elu = nn.ELU()

    # ------------------------------------------------------------------ sampler protocol
    color_steps = 1

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Integer levels (N, C, H, W) -> values in [-1, 1] (parameter dtype)."""
        return dequantize(x, self.num_classes, next(self.parameters()).dtype)

    def check_image_size(self, height: int, width: int) -> None:
        """H and W must be positive multiples of 4 (two stride-2 down-samplings, then up-samplings)."""
        if height < 4 or width < 4 or height % 4 or width % 4:
            raise ValueError(f"PixelCNNpp: image height and width must be positive multiples of 4 (two 2x "
                             f"down-samplings), got {height}x{width}")

    def check_condition(self, condition: torch.Tensor | None, batch: int) -> None:
        """PixelCNN++ here is unconditional."""
        if condition is not None:
            raise ValueError("PixelCNNpp is unconditional: condition must be None")

    def check_image(self, x: torch.Tensor) -> None:
        """Raise unless x is an int image (N, C, H, W) of levels in [0, num_bins) with a supported size."""
        if x.dim() != 4 or x.shape[1] != self.image_channels:
            raise ValueError(f"PixelCNNpp: x must be (N, {self.image_channels}, H, W), got shape {tuple(x.shape)}")
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"PixelCNNpp: x must hold integer levels, got dtype {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
            raise ValueError(f"PixelCNNpp: x levels must be in [0, {self.num_classes})")
        self.check_image_size(x.shape[2], x.shape[3])

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """Per pixel: one uniform for the mixture component, one per channel for the logistic draw."""
        return (batch, 1 + self.image_channels, height, width)

    def draw(self, out: torch.Tensor, u: torch.Tensor, step: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None) -> tuple[slice, torch.Tensor]:
        """All channels of one pixel: out (N, P), u (N, 1 + C) -> (slice(0, C), levels (N, C) int64)."""
        if top_k is not None or top_p is not None:
            raise ValueError("PixelCNNpp: top_k / top_p do not apply to a logistic mixture (use temperature)")
        v = sample_discretized_logistic_mixture(out, u, channels=self.image_channels,
                                                num_mixtures=self.num_mixtures, bins=self.num_classes,
                                                temperature=temperature)
        return slice(0, self.image_channels), quantize(v, self.num_classes)

    # ------------------------------------------------------------------ network
    def output_map(self, xf: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) values in [-1, 1] -> (N, P, H, W) mixture parameters."""
        x = torch.cat([xf, torch.ones_like(xf[:, :1])], dim=1)
        u = self.down_shift(self.u_init(x))
        ul = self.down_shift(self.ul_init_down(x)) + self.right_shift(self.ul_init_right(x))
        us, uls = [u], [ul]
        for scale in range(3):
            for block_u, block_ul in zip(self.up_u[scale], self.up_ul[scale]):
                u = block_u(u)
                ul = block_ul(ul, u)
                us.append(u)
                uls.append(ul)
            if scale < 2:
                u, ul = self.down_u[scale](u), self.down_ul[scale](ul)
                us.append(u)
                uls.append(ul)
        u, ul = us.pop(), uls.pop()
        for scale in range(3):
            for block_u, block_ul in zip(self.dn_u[scale], self.dn_ul[scale]):
                u = block_u(u, us.pop())
                ul = block_ul(ul, torch.cat([u, uls.pop()], dim=1))
            if scale < 2:
                u, ul = self.up_sample_u[scale](u), self.up_sample_ul[scale](ul)
        return self.out(self.elu(ul))

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """x int levels (N, C, H, W) -> mixture parameters (N, P, H, W)."""
        self.check_image(x)
        self.check_condition(condition, x.shape[0])
        return self.output_map(self.prepare(x))

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) in nats per image. x (N, C, H, W) int -> (N,)."""
        lp = discretized_logistic_mixture_log_prob(self.prepare(x), self.forward(x, condition),
                                                   num_mixtures=self.num_mixtures, bins=self.num_classes)
        return lp.reshape(x.shape[0], -1).sum(1)

    def bits_per_dim(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood in bits per sub-pixel (the number PixelCNN++ reports). -> (N,)."""
        return -self.log_prob(x, condition) / (x[0].numel() * math.log(2.0))


# ------------------------------------------------------------------------------------ cached decoding
