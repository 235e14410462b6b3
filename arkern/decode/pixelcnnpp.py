"""Decoding PixelCNN++: its cached decoder and the fused sampler's driver.

:class:`PixelCNNppDecoder` follows the schedule of Ramachandran et al. 2017: the `u` stream only sees rows
above, so all of it is computed once per row (level-1 rows on even rows, level-2 rows on rows divisible by
4); the `ul` stream is computed once per pixel at full resolution, and the stride-2 down/up-sampled layers
run only at the pixels where they produce a new output. :func:`sample_fused_pp` runs
``arkern.ops.pixelcnnpp_generate`` (the same schedule in C++) over the model's packed weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from arkern.decode.incremental import incremental
from arkern.models.pixelcnnpp import GatedResnet, PixelCNNpp
from arkern.ops.pixelcnnpp_decode import PixelCNNppFused, pixelcnnpp_generate

__all__ = ["PixelCNNppDecoder", "sample_fused_pp", "teacher_forced_fused_pp"]


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


@torch.no_grad()
def sample_fused_pp(packed: PixelCNNppFused, noise: torch.Tensor, *, temperature: float = 1.0,
                    callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Whole images in one kernel call. noise (N, 1 + C, H, W) float64 uniforms -> (N, C, H, W) int64 levels; a
    callback(i, j, image) runs afterwards, for every pixel in raster order, on the finished image."""
    n, _, height, width = noise.shape
    image = torch.zeros(n, packed.layout.channels, height, width, dtype=torch.int64)
    pixelcnnpp_generate(packed, image, noise.to(torch.float64).contiguous(), temperature=temperature)
    if callback is not None:
        for i in range(height):
            for j in range(width):
                callback(i, j, image)
    return image


@torch.no_grad()
def teacher_forced_fused_pp(packed: PixelCNNppFused, x: torch.Tensor) -> torch.Tensor:
    """The fused kernel's mixture parameters over a known image x (N, C, H, W) int -> (N, P, H, W)."""
    n, c, h, w = x.shape
    noise = torch.zeros(n, 1 + c, h, w, dtype=torch.float64)  # not read: every level is forced
    params = pixelcnnpp_generate(packed, torch.zeros_like(x), noise, return_params=True, forced=x.contiguous())
    return params.permute(0, 3, 1, 2)
