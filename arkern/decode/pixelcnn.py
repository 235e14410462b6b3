"""Decoding PixelCNN and Gated PixelCNN: their cached decoders and the fused sampler's driver.

- :class:`PixelCNNDecoder` / :class:`GatedPixelCNNDecoder`: the ``cached`` method, built from the layers'
  incremental views (:mod:`arkern.decode.incremental`), driven by :func:`arkern.decode.image.sample_raster`;
- :func:`sample_fused`: the ``fused`` method, ``arkern.ops.pixelcnn_generate`` over the model's packed weights
  (every row, pixel, colour sub-step, layer and draw in C++), one call for all rows or one per row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from arkern.decode.incremental import incremental
from arkern.models.gated_pixelcnn import GatedPixelCNN
from arkern.models.pixelcnn import PixelCNN
from arkern.ops.pixelcnn_decode import PixelCNNFused, pixelcnn_generate

__all__ = ["PixelCNNDecoder", "GatedPixelCNNDecoder", "sample_fused", "teacher_forced_fused"]


class PixelCNNDecoder:
    """Cached decoding of a :class:`PixelCNN`: the generic incremental view of its layer stack."""

    def __init__(self, model: PixelCNN) -> None:
        self.model = model
        self.view = incremental(model.net)

    def reset(self, batch: int, height: int, width: int, condition: torch.Tensor | None = None) -> None:
        """New images of (height, width); PixelCNN takes no condition."""
        p = next(self.model.parameters())
        self.view.reset(batch, height, width, dtype=p.dtype, device=p.device)

    def start_row(self, i: int, xf: torch.Tensor) -> None:
        """Nothing to do per row: every layer is decoded pixel by pixel."""

    def step(self, pixel: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """pixel (N, C) float input at (i, j) -> (N, C*K) logits at (i, j)."""
        return self.view.step(pixel, i, j)

    def commit(self, pixel: torch.Tensor, i: int, j: int) -> None:
        """pixel (N, C): the final (fully sampled) input at (i, j), written into the input cache."""
        self.view.write(pixel, i, j)


class GatedPixelCNNDecoder:
    """Cached decoding of a :class:`GatedPixelCNN` built from the generic incremental layer views."""

    def __init__(self, model: GatedPixelCNN) -> None:
        self.model = model
        self.v_convs = [incremental(m) for m in model.v_convs]
        self.h_convs = [incremental(m) for m in model.h_convs]
        self.links = [incremental(m) for m in model.links]
        self.h_outs = [incremental(m) for m in model.h_outs]
        self.head = incremental(model.head)
        self.views = self.v_convs + self.h_convs + self.links + self.h_outs + [self.head]

    def reset(self, batch: int, height: int, width: int, condition: torch.Tensor | None = None) -> None:
        """New images of (height, width); condition (N,) labels for a conditional model."""
        p = next(self.model.parameters())
        for view in self.views:
            view.reset(batch, height, width, dtype=p.dtype, device=p.device)
        self.batch, self.width, self.dtype, self.device = batch, width, p.dtype, p.device
        self.cond = self.model.layer_bias(condition)
        self.link_rows: list[torch.Tensor] = []

    def start_row(self, i: int, xf: torch.Tensor) -> None:
        """Run the vertical stack (xf (N, C, H, W) float, rows < i final) and keep, per layer, the 1x1 link
        row the horizontal stack adds at row i: (N, 2h, W). vertical_shift "link": the stack on image row
        i-1, the link of its pre-activations; "input": the stack on row i of the image shifted down one row,
        the link of its pre-activations before the class bias."""
        model = self.model
        if model.vertical_shift == "input":
            v = model.embed(xf[:, :, max(i - 1, 0), :])
            if i == 0:  # the shifted input's first row is zero (after the embedding, as in output_map)
                v = torch.zeros_like(v)
            self.link_rows = []
            for layer, cond in enumerate(self.cond):
                v_pre = self.v_convs[layer].step_row(v, i)
                self.link_rows.append(self.links[layer].step_row(v_pre, i))
                if cond is not None:
                    v_pre = v_pre + cond[:, :, None]
                v = model.v_gate(v_pre)
            return
        h2 = 2 * model.hidden_channels
        if i == 0:
            zero = torch.zeros(self.batch, h2, self.width, dtype=self.dtype, device=self.device)
            self.link_rows = [link.step_row(zero, 0) for link in self.links]
            return
        v = model.embed(xf[:, :, i - 1, :])
        self.link_rows = []
        for layer, cond in enumerate(self.cond):
            v_pre = self.v_convs[layer].step_row(v, i - 1)
            if cond is not None:
                v_pre = v_pre + cond[:, :, None]
            self.link_rows.append(self.links[layer].step_row(v_pre, i))
            v = model.v_gate(v_pre)

    def step(self, pixel: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """pixel (N, C) float input at (i, j) -> (N, C*K) logits at (i, j)."""
        hs = self.model.embed(pixel)
        for layer, cond in enumerate(self.cond):
            h_pre = self.h_convs[layer].step(hs, i, j) + self.link_rows[layer][:, :, j]
            if cond is not None:
                h_pre = h_pre + cond
            h_out = self.h_outs[layer].step(self.model.h_gate(h_pre), i, j)
            hs = h_out if layer == 0 else hs + h_out
        return self.head.step(hs, i, j)

    def commit(self, pixel: torch.Tensor, i: int, j: int) -> None:
        """pixel (N, C): the final (fully sampled) input at (i, j), written into the first conv's cache."""
        if not self.h_convs[0].stateless:  # a (1, 1) first layer keeps no cache
            self.h_convs[0].write(self.model.embed(pixel), i, j)


@torch.no_grad()
def sample_fused(packed: PixelCNNFused, noise: torch.Tensor, *, cond: torch.Tensor | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 callback: Callable[[int, int, torch.Tensor], None] | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Sample images with the fused kernel: all rows in one call, or one call per row to report progress.

    packed: the model's packed weights; noise (N, C, H, W) float64 uniforms; cond: (N, L, 2h) conditioning
    bias of a class-conditional Gated PixelCNN. callback(i, j, image) runs after each row, for each pixel of
    that row. Returns (N, C, H, W) int64 levels.
    """
    n, c, height, width = noise.shape
    image = torch.zeros(n, c, height, width, dtype=torch.int64)
    caches = packed.new_caches(n, height, width)
    noise = noise.to(torch.float64).contiguous()
    step = 1 if callback is not None or progress else height
    starts = range(0, height, step)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="sample_image[fused]", unit="row")
    for r0 in starts:
        r1 = min(height, r0 + step)
        pixelcnn_generate(packed, caches, image, noise, cond=cond, row_begin=r0, row_end=r1,
                          temperature=temperature, top_k=top_k, top_p=top_p)
        if callback is not None:
            for i in range(r0, r1):
                for j in range(width):
                    callback(i, j, image)
    return image


@torch.no_grad()
def teacher_forced_fused(packed: PixelCNNFused, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """The fused kernel's logits over a known image x (N, C, H, W) int (every level forced) -> (N, C*K, H, W)."""
    n, _, h, w = x.shape
    noise = torch.zeros(x.shape, dtype=torch.float64)  # not read: every level is forced
    logits = pixelcnn_generate(packed, packed.new_caches(n, h, w), torch.zeros_like(x), noise, cond=cond,
                               return_logits=True, forced=x.contiguous())
    return logits.permute(0, 3, 1, 2)
