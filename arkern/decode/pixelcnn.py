"""Image samplers for the PixelCNN family: `naive` (the reference), `cached` and `fused`, on shared
pre-drawn noise.

All walk the pixels in raster order and, per pixel, the model's colour sub-steps (R, then G, then B for
PixelCNN / Gated PixelCNN; one step for PixelCNN++ whose channels are coupled inside one distribution):

- naive: the full forward over the image generated so far, keeping output (i, j) — H*W*C forwards;
- cached: the model's decoder (per-layer input caches, see :mod:`arkern.decode.incremental`): one new
  position per layer per sub-step, row-only stacks once per row;
- fused: ``torch.ops.arkern.pixelcnn_generate`` (:mod:`arkern.ops.pixelcnn_decode`) runs every row, pixel,
  sub-step, layer and draw in C++ (PixelCNN and GatedPixelCNN; :func:`fused_supported`).

The draw at each sub-step is ``model.draw(out, noise[:, :, i, j], step)`` on uniforms drawn up front (the
fused kernel makes the same float64 decisions), so with the same model and noise all methods return the
same image.

Model protocol (implemented by :class:`arkern.models.PixelCNN`, :class:`arkern.models.GatedPixelCNN`,
:class:`arkern.models.PixelCNNpp`): ``image_channels``, ``color_steps``, ``prepare``, ``output_map``,
``decoder``, ``noise_shape``, ``draw``, ``check_image_size``, ``check_condition``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from arkern.ops import pixelcnnpp_decode as ppd
from arkern.ops._packcache import cached_pack
from arkern.ops.pixelcnn_decode import BACKENDS as FUSED_BACKENDS
from arkern.ops.pixelcnn_decode import condition_bias, pack_pixelcnn, pixelcnn_generate
from arkern.ops.pixelcnn_decode import unsupported_reasons as _pixelcnn_reasons

METHODS = ("cached", "naive", "fused")


def fused_supported(model: nn.Module) -> bool:
    """True when method="fused" samples `model` with the compiled kernel (what a default should pick).

    An explicit method="fused" also runs where the C++ kernel is not built, on the op's slow "reference"
    backend (see :func:`arkern.ops.last_backend`); models it cannot follow are listed by
    :func:`unsupported_reasons`.
    """
    if unsupported_reasons(model):
        return False
    dtype = next(model.parameters()).dtype
    table = ppd.BACKENDS if _is_pixelcnnpp(model) else FUSED_BACKENDS
    return not table.not_supported_reasons("cpu", torch.device("cpu"), dtype)


def _is_pixelcnnpp(model: nn.Module) -> bool:
    from arkern.models.pixelcnnpp import PixelCNNpp
    return isinstance(model, PixelCNNpp)


def unsupported_reasons(model: nn.Module) -> list[str]:
    """Why method="fused" cannot sample `model` (empty when it can): PixelCNN and GatedPixelCNN
    (:mod:`arkern.ops.pixelcnn_decode`) and PixelCNN++ (:mod:`arkern.ops.pixelcnnpp_decode`)."""
    if _is_pixelcnnpp(model):  # no slow fallback: the op has only its C++ backend
        cpu = torch.device("cpu")
        return ppd.unsupported_reasons(model) + ppd.BACKENDS.not_supported_reasons("cpu", cpu, torch.float32)
    reasons = _pixelcnn_reasons(model)
    if reasons and reasons[0].startswith("fused sampling supports"):
        return [f"fused sampling supports PixelCNN, GatedPixelCNN and PixelCNNpp, not {type(model).__name__} "
                "(use method='cached')"]
    return reasons


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
                 progress: bool = False, weight_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sample `batch_size` images of `shape` = (H, W) from an autoregressive image model.

    Args:
        method: "cached" (per-layer caches), "fused" (the C++ sampler; PixelCNN and GatedPixelCNN) or
            "naive" (full forward per sub-step, the reference).
        noise: pre-drawn uniforms of shape ``model.noise_shape(N, H, W)`` (else drawn from `generator`
            or `seed`, see :func:`draw_noise`).
        condition: class labels (N,) for a class-conditional model.
        temperature, top_k, top_p: categorical warpers (neutral defaults).
        callback: called as callback(i, j, image) after each pixel is complete ("fused": after each row,
            for each pixel of that row, so `image` already holds the whole row).
        progress: show a tqdm bar over rows.
        weight_dtype: "fused" only: torch.bfloat16 packs a float32 model's weights in bfloat16 (float32
            accumulation; samples then follow slightly different logits than "cached").

    Returns: (N, C, H, W) int64 levels.
    """
    if method not in METHODS:
        raise ValueError(f"sample_image: method must be one of {METHODS}, got {method!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"sample_image: batch_size must be a positive int, got {batch_size!r}")
    if method == "cached" and not callable(getattr(model, "decoder", None)):
        raise ValueError(f"sample_image: {type(model).__name__} has no cached decoder; use method='naive'")
    if method == "fused":
        reasons = unsupported_reasons(model)
        if reasons:
            raise ValueError("sample_image: method='fused' cannot sample this model: " + "; ".join(reasons))
    elif weight_dtype is not None:
        raise ValueError(f"sample_image: weight_dtype is an option of method='fused', not {method!r}")
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
        warpers = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        with torch.no_grad():
            if method == "fused":
                return _sample_fused(model, noise, condition, callback, progress, warpers, weight_dtype)
            return _sample(model, batch_size, height, width, method, noise.to(param.device), condition,
                           callback, progress, param.device, warpers)
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


def _sample_fused(model: nn.Module, noise: torch.Tensor, condition: torch.Tensor | None,
                  callback: Callable[[int, int, torch.Tensor], None] | None, progress: bool, warpers: dict,
                  weight_dtype: torch.dtype | None) -> torch.Tensor:
    """The fused sampler: all rows in one kernel call, or one call per row to report progress."""
    if _is_pixelcnnpp(model):
        return _sample_fused_pp(model, noise, callback, warpers, weight_dtype)
    packed = pack_pixelcnn(model, weight_dtype)
    n, c, height, width = noise.shape
    image = torch.zeros(n, c, height, width, dtype=torch.int64)
    caches = packed.new_caches(n, height, width)
    cond = condition_bias(model, packed, condition)
    noise = noise.to(torch.float64).contiguous()
    step = 1 if callback is not None or progress else height
    starts = range(0, height, step)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="sample_image[fused]", unit="row")
    for r0 in starts:
        r1 = min(height, r0 + step)
        pixelcnn_generate(packed, caches, image, noise, cond=cond, row_begin=r0, row_end=r1, **warpers)
        if callback is not None:
            for i in range(r0, r1):
                for j in range(width):
                    callback(i, j, image)
    return image


def _sample_fused_pp(model: nn.Module, noise: torch.Tensor,
                     callback: Callable[[int, int, torch.Tensor], None] | None, warpers: dict,
                     weight_dtype: torch.dtype | None) -> torch.Tensor:
    """PixelCNN++ through the fused kernel: whole images in one call (a callback runs afterwards, for every
    pixel in raster order, on the finished image)."""
    if warpers["top_k"] is not None or warpers["top_p"] is not None:
        raise ValueError("PixelCNNpp: top_k / top_p do not apply to a logistic mixture (use temperature)")
    if weight_dtype not in (None, torch.float32):
        raise ValueError(f"sample_image: the fused PixelCNN++ kernel packs float32 weights only, got {weight_dtype}")
    n, c, height, width = noise.shape
    image = torch.zeros(n, model.image_channels, height, width, dtype=torch.int64)
    packed = cached_pack(model, "pixelcnnpp", lambda: ppd.pack_pixelcnnpp(model))
    ppd.pixelcnnpp_generate(packed, image, noise.to(torch.float64).contiguous(),
                            temperature=warpers["temperature"])
    if callback is not None:
        for i in range(height):
            for j in range(width):
                callback(i, j, image)
    return image


def teacher_forced_outputs(model: nn.Module, x: torch.Tensor, condition: torch.Tensor | None = None,
                           *, fill: float = 0.0, method: str = "cached") -> torch.Tensor:
    """Run the cached decoder over a known image, as the sampler would, and collect every output.

    Each pixel is fed exactly as the sampler feeds it: once per colour sub-step, where at sub-step g the
    channels >= g of the current pixel are unknown (set to `fill`), then committed whole. The output kept
    for channel group g is the one from sub-step g. Shapes: x (N, C, H, W) int -> (N, D, H, W), to compare with
    ``model.output_map(model.prepare(x), condition)``.

    method="fused" runs the fused kernel with the image forced (its unknown channels are never read, so
    `fill` does not apply).
    """
    model.check_image(x)
    if method == "fused" and _is_pixelcnnpp(model):
        model.check_condition(condition, x.shape[0])
        noise = torch.zeros(model.noise_shape(x.shape[0], *x.shape[2:]), dtype=torch.float64)  # not read
        with torch.no_grad():
            params = ppd.pixelcnnpp_generate(ppd.pack_pixelcnnpp(model), torch.zeros_like(x), noise,
                                             return_params=True, forced=x.contiguous())
        return params.permute(0, 3, 1, 2)
    if method == "fused":
        model.check_condition(condition, x.shape[0])
        packed = pack_pixelcnn(model)
        n, _, h, w = x.shape
        noise = torch.zeros(x.shape, dtype=torch.float64)  # not read: every level is forced
        with torch.no_grad():
            logits = pixelcnn_generate(packed, packed.new_caches(n, h, w), torch.zeros_like(x), noise,
                                       cond=condition_bias(model, packed, condition), return_logits=True,
                                       forced=x.contiguous())
        return logits.permute(0, 3, 1, 2)
    if method != "cached":
        raise ValueError(f"teacher_forced_outputs: method must be 'cached' or 'fused', got {method!r}")
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
