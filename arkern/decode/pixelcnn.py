"""Image samplers for the PixelCNN family: `naive` (the reference) and `cached`, on shared pre-drawn noise.

Both walk the pixels in raster order and, per pixel, the model's colour sub-steps (R, then G, then B for
PixelCNN / Gated PixelCNN; one step for PixelCNN++ whose channels are coupled inside one distribution):

- naive: the full forward over the image generated so far, keeping output (i, j) — H*W*C forwards;
- cached: the model's decoder (per-layer input caches, see :mod:`arkern.decode.incremental`): one new
  position per layer per sub-step, row-only stacks once per row.

The draw at each sub-step is ``model.draw(out, noise[:, :, i, j], step)`` on uniforms drawn up front, so
with the same model and noise both methods return the same image.

Model protocol (implemented by :class:`arkern.models.PixelCNN`, :class:`arkern.models.GatedPixelCNN`,
:class:`arkern.models.PixelCNNpp`): ``image_channels``, ``color_steps``, ``prepare``, ``output_map``,
``decoder``, ``noise_shape``, ``draw``, ``check_image_size``, ``check_condition``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

METHODS = ("cached", "naive")


def draw_noise(model: nn.Module, batch_size: int, shape: tuple[int, int], *,
               generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
    """The uniforms one image batch consumes: float64 of shape ``model.noise_shape(N, H, W)``, in [0, 1)."""
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return torch.rand(model.noise_shape(batch_size, *shape), generator=generator, dtype=torch.float64)


def _check_shape(shape) -> tuple[int, int]:
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2 and all(isinstance(s, int) for s in shape)):
        raise ValueError(f"sample_image: shape must be (height, width), got {shape!r}")
    return int(shape[0]), int(shape[1])


def sample_image(model: nn.Module, batch_size: int, *, shape: tuple[int, int], method: str = "cached",
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 seed: int | None = None, condition: torch.Tensor | None = None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 callback: Callable[[int, int, torch.Tensor], None] | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Sample `batch_size` images of `shape` = (H, W) from an autoregressive image model.

    Args:
        method: "cached" (per-layer caches) or "naive" (full forward per sub-step, the reference).
        noise: pre-drawn uniforms of shape ``model.noise_shape(N, H, W)`` (else drawn from `generator`
            or `seed`, see :func:`draw_noise`).
        condition: class labels (N,) for a class-conditional model.
        temperature, top_k, top_p: categorical warpers (neutral defaults).
        callback: called as callback(i, j, image) after each pixel is complete.
        progress: show a tqdm bar over rows.

    Returns: (N, C, H, W) int64 levels.
    """
    if method not in METHODS:
        raise ValueError(f"sample_image: method must be one of {METHODS}, got {method!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"sample_image: batch_size must be a positive int, got {batch_size!r}")
    if method == "cached" and not callable(getattr(model, "decoder", None)):
        raise ValueError(f"sample_image: {type(model).__name__} has no cached decoder; use method='naive'")
    height, width = _check_shape(shape)
    model.check_image_size(height, width)
    model.check_condition(condition, batch_size)
    expected = tuple(model.noise_shape(batch_size, height, width))
    if noise is None:
        noise = draw_noise(model, batch_size, (height, width), generator=generator, seed=seed)
    elif tuple(noise.shape) != expected:
        raise ValueError(f"sample_image: noise must have shape {expected} (model.noise_shape(N, H, W)), "
                         f"got {tuple(noise.shape)}")
    elif noise.is_complex() or not noise.is_floating_point():
        raise ValueError(f"sample_image: noise must be floating-point uniforms in [0, 1), got {noise.dtype}")
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        # no_grad, not inference_mode: kernels that run ATen in-place ops on worker threads do not see the
        # inference-mode flag there and refuse to update inference tensors
        with torch.no_grad():
            return _sample(model, batch_size, height, width, method, noise.to(param.device), condition,
                           callback, progress, param.device,
                           {"temperature": temperature, "top_k": top_k, "top_p": top_p})
    finally:
        model.train(was_training)


def _sample(model: nn.Module, batch_size: int, height: int, width: int, method: str, noise: torch.Tensor,
            condition: torch.Tensor | None, callback: Callable[[int, int, torch.Tensor], None] | None,
            progress: bool, device: torch.device,
            kwargs: dict) -> torch.Tensor:
    """The raster loop of :func:`sample_image` (arguments already validated) -> (N, C, H, W) int64."""
    image = torch.zeros(batch_size, model.image_channels, height, width, dtype=torch.int64,
                        device=device)
    xf = model.prepare(image)
    decoder = model.decoder() if method == "cached" else None
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


def teacher_forced_outputs(model: nn.Module, x: torch.Tensor, condition: torch.Tensor | None = None,
                           *, fill: float = 0.0) -> torch.Tensor:
    """Run the cached decoder over a known image, as the sampler would, and collect every output.

    Each pixel is fed exactly as the sampler feeds it: once per colour sub-step, where at sub-step g the
    channels >= g of the current pixel are unknown (set to `fill`), then committed whole. The output kept
    for channel group g is the one from sub-step g. Shapes: x (N, C, H, W) int -> (N, D, H, W), to compare with
    ``model.output_map(model.prepare(x), condition)``.
    """
    model.check_image(x)
    n, c, h, w = x.shape
    steps = model.color_steps
    with torch.no_grad():
        xf = model.prepare(x)
        decoder = model.decoder()
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
