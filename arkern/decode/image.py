"""The raster image sampler of every PixelCNN-family model: ``naive`` (the reference) and ``cached``.

Both walk the pixels in raster order and, per pixel, the model's colour sub-steps (R, then G, then B for
PixelCNN / Gated PixelCNN; one step for PixelCNN++, whose channels are coupled inside one distribution):

- naive: the full forward over the image generated so far, keeping output (i, j) — H*W*C forwards;
- cached: a decoder (per-layer input caches, see :mod:`arkern.decode.incremental`) computes one new position
  per layer per sub-step, row-only stacks once per row.

The draw at each sub-step is ``model.draw(out, noise[:, :, i, j], step)`` on uniforms drawn up front, so with
the same model and noise both return the same image — and so does the fused kernel of the family, which
makes the same float64 decisions (docs/design.md, "Exactness").

Model protocol (:class:`arkern.models.pixelcnn.CategoricalImageModel`, :class:`arkern.models.PixelCNNpp`):
``image_channels``, ``color_steps``, ``prepare``, ``output_map``, ``noise_shape``, ``draw``. Decoder protocol
(:class:`ImageDecoder`): ``reset``, ``start_row``, ``step``, ``commit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

__all__ = ["ImageDecoder", "sample_raster", "teacher_forced_cached"]


class ImageDecoder(Protocol):
    """The cached decoder of an image model (one per family; built from its layers' incremental views)."""

    def reset(self, batch: int, height: int, width: int, condition: torch.Tensor | None = None) -> None:
        """Start new images of (height, width) with class labels `condition` (N,) or None."""

    def start_row(self, i: int, xf: torch.Tensor) -> None:
        """Run the stacks that see only rows above (xf: the (N, C, H, W) input so far)."""

    def step(self, pixel: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """pixel (N, C) input at (i, j) (channels not yet drawn are placeholders) -> (N, D) outputs."""

    def commit(self, pixel: torch.Tensor, i: int, j: int) -> None:
        """Write the final (fully drawn) input pixel (N, C) at (i, j) into the caches."""


@torch.no_grad()
def sample_raster(model: nn.Module, noise: torch.Tensor, *, decoder: ImageDecoder | None = None,
                  condition: torch.Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, callback: Callable[[int, int, torch.Tensor], None] | None = None,
                  progress: bool = False) -> torch.Tensor:
    """Sample images pixel by pixel in raster order: `naive` (decoder None) or `cached` (with `decoder`).

    noise: (N, ...) uniforms of ``model.noise_shape(N, H, W)`` (arguments are validated by the caller, the
    model family). callback(i, j, image) after each pixel. Returns (N, C, H, W) int64 levels.
    """
    batch_size, _, height, width = noise.shape
    method = "naive" if decoder is None else "cached"
    kwargs = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    image = torch.zeros(batch_size, model.image_channels, height, width, dtype=torch.int64,
                        device=noise.device)
    xf = model.prepare(image)
    if decoder is not None:
        decoder.reset(batch_size, height, width, condition)
    rows = range(height)
    if progress:
        from tqdm.auto import tqdm
        rows = tqdm(rows, desc=f"sample_image[{method}]", unit="row")
    for i in rows:
        if decoder is not None:
            decoder.start_row(i, xf)
        for j in range(width):
            u = noise[:, :, i, j]
            for step in range(model.color_steps):
                if decoder is not None:
                    out = decoder.step(xf[:, :, i, j], i, j)
                else:
                    out = model.output_map(xf, condition)[:, :, i, j]
                channels, values = model.draw(out, u, step, **kwargs)
                image[:, channels, i, j] = values
                xf[:, channels, i, j] = model.prepare(values)
            if decoder is not None:
                decoder.commit(xf[:, :, i, j], i, j)
            if callback is not None:
                callback(i, j, image)
    return image


@torch.no_grad()
def teacher_forced_cached(model: nn.Module, decoder: ImageDecoder, x: torch.Tensor,
                          condition: torch.Tensor | None = None, *, fill: float = 0.0) -> torch.Tensor:
    """Run `decoder` over a known image x (N, C, H, W) int exactly as the sampler would, collecting every
    output -> (N, D, H, W), to compare with ``model.output_map(model.prepare(x), condition)``.

    At colour sub-step g the channels >= g of the current pixel are unknown (set to `fill`); the output kept
    for channel group g is the one from sub-step g; then the whole pixel is committed.
    """
    n, c, h, w = x.shape
    steps = model.color_steps
    xf = model.prepare(x)
    decoder.reset(n, h, w, condition)
    outs = None
    for i in range(h):
        decoder.start_row(i, xf)
        for j in range(w):
            for step in range(steps):
                pixel = xf[:, :, i, j].clone()
                if steps > 1:
                    pixel[:, step:] = fill
                else:
                    pixel.fill_(fill)
                out = decoder.step(pixel, i, j)
                if outs is None:
                    outs = torch.zeros(n, out.shape[1], h, w, dtype=out.dtype, device=out.device)
                block = out.shape[1] // steps
                sl = slice(step * block, (step + 1) * block) if steps > 1 else slice(None)
                outs[:, sl, i, j] = out[:, sl]
            decoder.commit(xf[:, :, i, j], i, j)
    return outs
