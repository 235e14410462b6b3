"""PixelCNN++ (Salimans et al. 2017): down- and down-right-shifted convs, gated resnet blocks with
concat_elu, two stride-2 down-samplings and up-samplings with skip connections, and a discretized
logistic mixture output (RGB channels coupled inside the mixture, so one draw per pixel).

Layout follows the reference implementation (openai/pixel-cnn): an up pass over three scales
(H, H/2, H/4) of a `u` stream (sees rows above) and a `ul` stream (rows above and pixels to the left),
then a down pass that consumes the up pass's outputs as auxiliary inputs.

Cached decoding (:class:`PixelCNNppDecoder`, the schedule of Ramachandran et al. 2017): the `u` stream
only sees rows above, so all of it is computed once per row (level-1 rows on even rows, level-2 rows on
rows divisible by 4); the `ul` stream is computed once per pixel at full resolution, and the stride-2
down/up-sampled layers run only at the pixels where they produce a new output ((2r, 2c) for level 1,
(4q, 4p) for level 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import arkern.nn as ann
from arkern.decode.incremental import ConcatELU, DownShift, RightShift, incremental
from arkern.distributions import (
    dequantize,
    discretized_logistic_mixture_log_prob,
    mixture_params_size,
    quantize,
    sample_discretized_logistic_mixture,
)


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

    def decoder(self) -> PixelCNNppDecoder:
        """The cached decoder (u stream once per row, ul stream once per pixel, strided layers sparse)."""
        return PixelCNNppDecoder(self)

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


def _concat_elu(x: torch.Tensor) -> torch.Tensor:
    return F.elu(torch.cat([x, -x], dim=1))


class _ResnetView:
    """Incremental view of a :class:`GatedResnet` (pixel steps for 'downright', row steps for 'down')."""

    def __init__(self, block: GatedResnet) -> None:
        self.conv_in, self.conv_out = incremental(block.conv_in), incremental(block.conv_out)
        self.nin = incremental(block.nin_aux) if block.nin_aux is not None else None

    def reset(self, n: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> None:
        for v in (self.conv_in, self.conv_out, self.nin):
            if v is not None:
                v.reset(n, h, w, dtype=dtype, device=device)

    def step(self, x: torch.Tensor, aux: torch.Tensor | None, i: int, j: int) -> torch.Tensor:
        c = self.conv_in.step(_concat_elu(x), i, j)
        if self.nin is not None:
            c = c + self.nin.step(_concat_elu(aux), i, j)
        a, b = self.conv_out.step(_concat_elu(c), i, j).chunk(2, dim=1)
        return x + a * torch.sigmoid(b)

    def step_row(self, x: torch.Tensor, aux: torch.Tensor | None, i: int) -> torch.Tensor:
        c = self.conv_in.step_row(_concat_elu(x), i)
        if self.nin is not None:
            c = c + self.nin.step_row(_concat_elu(aux), i)
        a, b = self.conv_out.step_row(_concat_elu(c), i).chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


class _Stride2View:
    """A stride-2 ShiftedConv2d: caches its full-resolution input, computes one output pixel / row."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer

    def reset(self, n: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> None:
        kh, kw = self.layer.kernel_size
        half = (kw - 1) // 2
        self.top, self.left = kh - 1, (half if self.layer.shift == "down" else kw - 1)
        right = half if self.layer.shift == "down" else 0
        weight = self.layer.weight.detach().to(device=device, dtype=dtype)
        self.w4, self.wt = weight, weight.reshape(weight.shape[0], -1).t().contiguous()
        self.b = None if self.layer.bias is None else self.layer.bias.detach().to(device=device, dtype=dtype)
        self.cache = torch.zeros(n, weight.shape[1], h + self.top, w + self.left + right, dtype=dtype,
                                 device=device)
        self.width = w

    def write(self, x: torch.Tensor, i: int, j: int) -> None:
        self.cache[:, :, self.top + i, self.left + j] = x

    def write_row(self, x: torch.Tensor, i: int) -> None:
        self.cache[:, :, self.top + i, self.left:self.left + self.width] = x

    def pixel(self, r: int, c: int) -> torch.Tensor:
        kh, kw = self.w4.shape[2:]
        patch = self.cache[:, :, 2 * r:2 * r + kh, 2 * c:2 * c + kw].reshape(self.cache.shape[0], -1)
        return torch.addmm(self.b, patch, self.wt) if self.b is not None else patch @ self.wt

    def row(self, r: int) -> torch.Tensor:
        kh = self.w4.shape[2]
        return F.conv2d(self.cache[:, :, 2 * r:2 * r + kh], self.w4, self.b, stride=(1, 2))[:, :, 0, :]


class PixelCNNppDecoder:
    """Cached decoding of a :class:`PixelCNNpp`. Level L is resolution (H, W) / 2**L."""

    def __init__(self, model: PixelCNNpp) -> None:
        m = self.model = model
        self.R = len(m.up_u[0])
        self.u_init, self.ul_init_down = incremental(m.u_init), incremental(m.ul_init_down)
        self.ul_init_right = incremental(m.ul_init_right)
        self.up_u = [[_ResnetView(b) for b in m.up_u[lv]] for lv in range(3)]
        self.up_ul = [[_ResnetView(b) for b in m.up_ul[lv]] for lv in range(3)]
        self.dn_u = [[_ResnetView(b) for b in m.dn_u[2 - lv]] for lv in range(3)]
        self.dn_ul = [[_ResnetView(b) for b in m.dn_ul[2 - lv]] for lv in range(3)]
        self.down_u = [_Stride2View(layer) for layer in m.down_u]  # level L -> L+1
        self.down_ul = [_Stride2View(layer) for layer in m.down_ul]
        self.up_sample_u = [m.up_sample_u[1], m.up_sample_u[0]]  # index L: level L+1 -> L
        self.up_sample_ul = [m.up_sample_ul[1], m.up_sample_ul[0]]
        self.out = incremental(m.out)

    def reset(self, batch: int, height: int, width: int, condition: torch.Tensor | None = None) -> None:
        """New images of (height, width) (multiples of 4)."""
        self.model.check_image_size(height, width)
        p = next(self.model.parameters())
        dt, dev = p.dtype, p.device
        f = self.model.u_init.out_channels
        sizes = [(height >> lv, width >> lv) for lv in range(3)]
        for v in (self.u_init, self.ul_init_down, self.ul_init_right, self.out):
            v.reset(batch, height, width, dtype=dt, device=dev)
        for lv, (h, w) in enumerate(sizes):
            for view in self.up_u[lv] + self.up_ul[lv] + self.dn_u[lv] + self.dn_ul[lv]:
                view.reset(batch, h, w, dt, dev)
            if lv < 2:
                self.down_u[lv].reset(batch, h, w, dt, dev)
                self.down_ul[lv].reset(batch, h, w, dt, dev)
        zeros = lambda *shape: torch.zeros(batch, f, *shape, dtype=dt, device=dev)
        self.u_up: list[list[torch.Tensor]] = [[], [], []]  # per level: the R+1 up-pass rows of the last row
        self.u_dn: list[list[torch.Tensor]] = [[], [], []]  # per level: the down-pass rows after each block
        self.u_dn_map = [None] + [zeros(h, w) for h, w in sizes[1:]]  # final down-pass u, for up-sampling
        self.ul_dn_map = [None] + [zeros(h, w) for h, w in sizes[1:]]
        self.batch, self.width, self.f, self.dt, self.dev = batch, width, f, dt, dev
        self.prev_pixel: torch.Tensor | None = None

    def _input(self, xf: torch.Tensor) -> torch.Tensor:
        return torch.cat([xf, torch.ones_like(xf[:, :1])], dim=1)

    def start_row(self, i: int, xf: torch.Tensor) -> None:
        """The whole u stream for row i (image rows < i final in xf (N, C, H, W)), all levels that change."""
        if i == 0:
            u = torch.zeros(self.batch, self.f, self.width, dtype=self.dt, device=self.dev)
            self.ul_down_row = u
        else:
            row = self._input(xf[:, :, i - 1, :])
            u = self.u_init.step_row(row, i - 1)  # down_shift: row i of the stream is conv row i-1
            self.ul_down_row = self.ul_init_down.step_row(row, i - 1)
        rows = [i, i >> 1 if i % 2 == 0 else None, i >> 2 if i % 4 == 0 else None]
        for lv in range(3):
            r = rows[lv]
            if r is None:
                break
            if lv:
                u = self.down_u[lv - 1].row(r)
            vals = [u]
            for view in self.up_u[lv]:
                u = view.step_row(u, None, r)
                vals.append(u)
            self.u_up[lv] = vals
            if lv < 2:
                self.down_u[lv].write_row(u, r)
        for lv in (2, 1, 0):
            r = rows[lv]
            if r is None:
                continue
            vals = self.u_up[lv]
            if lv == 2:
                u, aux = vals[self.R], vals[self.R - 1::-1] if self.R else []
            else:
                u = self.up_sample_u[lv](self.u_dn_map[lv + 1][:, :, r >> 1, None, :])[:, :, r % 2, :]
                aux = vals[::-1]
            self.u_dn[lv] = []
            for view, a in zip(self.dn_u[lv], aux):
                u = view.step_row(u, a, r)
                self.u_dn[lv].append(u)
            if lv:
                self.u_dn_map[lv][:, :, r, :] = u

    def _ul_level(self, lv: int, ul: torch.Tensor, r: int, c: int) -> list[torch.Tensor]:
        vals = [ul]
        for k, view in enumerate(self.up_ul[lv]):
            ul = view.step(ul, self.u_up[lv][k + 1][:, :, c], r, c)
            vals.append(ul)
        if lv < 2:
            self.down_ul[lv].write(ul, r, c)
        return vals

    def _ul_down(self, lv: int, ul: torch.Tensor, vals: list[torch.Tensor], r: int, c: int) -> torch.Tensor:
        aux = vals[self.R - 1::-1] if lv == 2 else vals[::-1]
        if lv == 2 and not self.R:
            aux = []
        for view, u, a in zip(self.dn_ul[lv], self.u_dn[lv], aux):
            ul = view.step(ul, torch.cat([u[:, :, c], a], dim=1), r, c)
        return ul

    def _up_sample_ul(self, lv: int, r: int, c: int) -> torch.Tensor:
        layer = self.up_sample_ul[lv]  # 'downright' (2, 2), stride 2: output (r, c) has one input pixel
        x = self.ul_dn_map[lv + 1][:, :, r >> 1, c >> 1]
        w = layer.weight[:, :, r % 2, c % 2].to(self.dt)
        return torch.addmm(layer.bias.to(self.dt), x, w) if layer.bias is not None else x @ w

    def step(self, pixel: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """pixel (N, C): ignored (output (i, j) does not see pixel (i, j)) -> (N, P) parameters at (i, j)."""
        right = (self.ul_init_right.step(self.prev_pixel, i, j - 1) if j > 0
                 else torch.zeros_like(self.ul_down_row[:, :, 0]))
        vals0 = self._ul_level(0, self.ul_down_row[:, :, j] + right, i, j)
        if i % 2 == 0 and j % 2 == 0:
            r, c = i >> 1, j >> 1
            vals1 = self._ul_level(1, self.down_ul[0].pixel(r, c), r, c)
            if r % 2 == 0 and c % 2 == 0:
                q, p = r >> 1, c >> 1
                vals2 = self._ul_level(2, self.down_ul[1].pixel(q, p), q, p)
                self.ul_dn_map[2][:, :, q, p] = self._ul_down(2, vals2[self.R], vals2, q, p)
            self.ul_dn_map[1][:, :, r, c] = self._ul_down(1, self._up_sample_ul(1, r, c), vals1, r, c)
        ul = self._ul_down(0, self._up_sample_ul(0, i, j), vals0, i, j)
        return self.out.step(F.elu(ul), i, j)

    def commit(self, pixel: torch.Tensor, i: int, j: int) -> None:
        """pixel (N, C): the sampled pixel (i, j), the input of the down-right init conv at (i, j)."""
        self.prev_pixel = self._input(pixel)
        self.ul_init_right.write(self.prev_pixel, i, j)
