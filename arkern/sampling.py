"""`generate`: the one sampling entry point for every model, and the helpers around it.

`generate` validates the arguments, asks the model's family (:func:`arkern.families.family_of`) for the
methods it offers here and picks one (the fastest unless named), prepares the noise (per-call generator or
seed, or the caller's `noise`) and the conditioning, then runs the family's sampler. Every draw is a
deterministic function of the network outputs and these pre-drawn uniforms (:mod:`arkern.distributions`), so
the naive, cached and fused methods return the same samples (docs/design.md, "Exactness").

Sampling over several processes is :mod:`arkern.distributed` (a layer above this one), reached through
``arkern.generate(..., distributed=True)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from arkern.decode.methods import METHODS
from arkern.distributions import check_warpers, draw_uniforms
from arkern.families import ImageFamily, ModelFamily, family_of
from arkern.ops._validate import check_uniforms

__all__ = ["generate", "prepare_run", "PreparedRun", "available_methods", "default_method", "method_reasons",
           "sample_image", "teacher_forced_outputs"]


@dataclass(frozen=True)
class PreparedRun:
    """The validated inputs of one `generate` call: family, size (length or (H, W)), method, noise shape, and
    the noise itself (None when the caller leaves the draw to :func:`draw_run_noise`)."""

    family: ModelFamily
    size: int | tuple[int, int]
    method: str
    noise_shape: tuple[int, ...]
    noise: torch.Tensor | None


def _pick_method(family: ModelFamily, model: nn.Module, method: str | None) -> str:
    available = family.methods(model)
    if method is None:
        if not available:
            raise ValueError(f"generate: no sampling method can run {type(model).__name__} here")
        return available[0]
    if method in available:
        return method
    if method not in METHODS:
        raise ValueError(f"generate: method must be one of {METHODS} (or None for the fastest), got {method!r}")
    reason = family.method_reasons(model).get(method)
    why = f" ({reason})" if reason else ""
    raise ValueError(f"generate: method {method!r} is not available for {type(model).__name__} in this build"
                     f"{why}; available: {', '.join(available)}")


def _check_size(family: ModelFamily, model: nn.Module, length: object, shape: object) -> int | tuple[int, int]:
    name = type(model).__name__
    if family.size_argument == "shape":
        if length is not None:
            raise ValueError(f"generate: {name} samples images: pass shape=(height, width), not length")
        if shape is None:
            raise ValueError(f"generate: {name} samples images: pass shape=(height, width)")
        return family.check_size(model, shape)
    if shape is not None:
        raise ValueError(f"generate: {name} samples sequences: pass length=, not shape")
    if length is None:
        raise ValueError(f"generate: {name} samples sequences: pass length= (number of steps)")
    return family.check_size(model, length)


def prepare_run(model: nn.Module, batch_size: int, *, length: object = None, shape: object = None,
                method: str | None = None, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None, seed: int | None = None,
                noise: torch.Tensor | None = None, who: str = "generate") -> PreparedRun:
    """Validate a `generate` call's arguments and its noise (drawn here from `generator` / `seed` when given).

    Without generator, seed and noise the noise is left None: :func:`generate` then draws it from torch's
    global generator (:mod:`arkern.distributed` draws it on rank 0 only and broadcasts it).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{who}: batch_size must be an int >= 1, got {batch_size!r}")
    check_warpers(temperature, top_k, top_p, who)
    family = family_of(model)
    size = _check_size(family, model, length, shape)
    method = _pick_method(family, model, method)
    if generator is not None and seed is not None:
        raise ValueError(f"{who}: pass generator or seed, not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise ValueError(f"{who}: seed must be an int in [0, 2**64), got {seed!r}")
    noise_shape = tuple(family.noise_shape(model, batch_size, size))
    check_run_memory(noise_shape, family.size_argument, who)
    if noise is None:
        if generator is not None or seed is not None:
            noise = draw_run_noise(model, noise_shape, generator=generator, seed=seed)
    else:
        if generator is not None or seed is not None:
            raise ValueError(f"{who}: pass noise, or generator/seed to draw it, not both")
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != noise_shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"{who}: noise must have shape {noise_shape}, got {got}")
        check_uniforms(who, noise, next(model.parameters()).device)
    return PreparedRun(family, size, method, noise_shape, noise)


def check_run_memory(noise_shape: tuple[int, ...], size_argument: str, who: str = "generate") -> None:
    """Refuse, before drawing anything, a run whose uniforms and samples (16 bytes per draw) exceed this
    machine's memory: a typo like ``shape=(2**40, 2**40)`` fails at once, not after minutes of swapping."""
    draws = math.prod(noise_shape)
    need, have = 16 * draws, physical_memory()
    if need > have:
        raise ValueError(f"{who}: batch_size and {size_argument} ask for {draws:.3g} draws ({need / 2**30:.3g} GiB of "
                         f"noise and samples), more than this machine's {have / 2**30:.3g} GiB of memory")


def physical_memory() -> int:
    """Bytes of RAM of this machine (a large fallback where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 46


def draw_run_noise(model: nn.Module, noise_shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                   seed: int | None = None) -> torch.Tensor:
    """The uniforms of a run, on the model's device (torch's global generator when neither is given)."""
    return draw_uniforms(noise_shape, generator=generator, seed=seed, device=next(model.parameters()).device)


def generate(model: nn.Module, batch_size: int, *, length: int | None = None,
             shape: tuple[int, int] | None = None, method: str | None = None, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             seed: int | None = None, noise: torch.Tensor | None = None, condition: object = None,
             callback: Callable[[torch.Tensor, int], None] | None = None, progress: bool = True,
             **options: object) -> torch.Tensor:
    """Sample `batch_size` sequences (WaveNet) or images (PixelCNN family) from an autoregressive model.

    Args:
        model: e.g. :class:`arkern.models.WaveNet`, :class:`arkern.models.GatedPixelCNN`,
            :class:`arkern.models.PixelCNN`, :class:`arkern.models.PixelCNNpp`, or ``arkern.load("digits")``
            (any model whose family is registered, :mod:`arkern.families`).
        length: number of steps T (sequence models).
        shape: (H, W) (image models).
        method: "fused" (C++ kernel, many steps per call), "cached" (per-layer state, Python-driven),
            "naive" (full forward per step; the reference), or None: the fastest available for this model
            (see :func:`default_method`). All three return the same samples for the same noise.
        temperature, top_k, top_p: warpers; the defaults leave the model's distribution unchanged.
        generator / seed: where the uniforms come from (per call; default: torch's global generator).
        noise: pre-drawn float64 uniforms of the family's noise shape (WaveNet: (batch_size, length); images:
            ``model.noise_shape(batch_size, H, W)``, e.g. (N, C, H, W)).
        condition: the family's conditioning. WaveNet: local (B, C, frames) tensor or
            {"local": ..., "global": (B, G)}. Class-conditional image models: labels (N,) as an int tensor or a
            list, or one int for the whole batch.
        callback: a streamer: WaveNet: callback(samples (B, n), start) after each chunk of n steps; images:
            callback(rows (N, C, 1, W), i) after each completed row i.
        progress: show a tqdm bar (stderr) for runs longer than a second; False: never.
        options: family options (WaveNet: chunk_size, weight_dtype, ops; PixelCNN: weight_dtype).

    Returns:
        WaveNet: (batch_size, length) int64 μ-law classes (see :func:`arkern.audio.mulaw_decode`).
        Images: (batch_size, C, H, W) int64 levels in [0, K); a prior over code grids (model.meta["kind"] ==
        "codes", e.g. a converted VQ-VAE prior): (batch_size, H, W) codes.

    Raises:
        ValueError: invalid arguments.
    """
    run = prepare_run(model, batch_size, length=length, shape=shape, method=method, temperature=temperature,
                      top_k=top_k, top_p=top_p, generator=generator, seed=seed, noise=noise)
    if callback is not None and not callable(callback):
        raise TypeError(f"generate: callback must be callable, got {type(callback).__name__}")
    family = run.family
    noise = run.noise if run.noise is not None else draw_run_noise(model, run.noise_shape)
    labels = family.prepare_condition(model, condition, batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total, unit = (run.size[0], "row") if family.size_argument == "shape" else (run.size, "step")
        bar = tqdm(total=total, desc=f"{type(model).__name__} {run.method}", unit=unit, leave=False, delay=1.0)
    try:
        return family.sample(model, noise, size=run.size, method=run.method, temperature=temperature, top_k=top_k,
                             top_p=top_p, condition=labels, callback=callback,
                             progress=bar.update if bar else None, **options)
    finally:
        if bar is not None:
            bar.close()


def available_methods(model: nn.Module) -> tuple[str, ...]:
    """The methods `generate` can use for `model` in this build, fastest first (the first is the default)."""
    return family_of(model).methods(model)


def method_reasons(model: nn.Module) -> dict[str, str]:
    """Why each method `generate` cannot use for `model` here is unavailable: {method: reason}."""
    return family_of(model).method_reasons(model)


def default_method(model: nn.Module) -> str:
    """The method `generate` uses for `model` when none is given: the fastest available here."""
    return _pick_method(family_of(model), model, None)


def sample_image(model: nn.Module, batch_size: int, *, shape: tuple[int, int], method: str = "cached",
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 seed: int | None = None, condition: torch.Tensor | None = None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 callback: Callable[[int, int, torch.Tensor], None] | None = None,
                 progress: bool = False, weight_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sample `batch_size` images of `shape` = (H, W) from an image model, per pixel (the lower-level face of
    :func:`generate` for image families).

    Args:
        method: "cached" (per-layer caches), "fused" (the family's C++ sampler) or "naive" (full forward per
            sub-step, the reference).
        noise: pre-drawn uniforms of shape ``model.noise_shape(N, H, W)`` (else drawn from `generator`
            or `seed`, see :func:`arkern.families.draw_noise`).
        condition: class labels (N,) for a class-conditional model.
        temperature, top_k, top_p: categorical warpers (neutral defaults).
        callback: called as callback(i, j, image) after each pixel is complete ("fused": after each row,
            for each pixel of that row, so `image` already holds the whole row).
        progress: show a tqdm bar over rows.
        weight_dtype: "fused" only: torch.bfloat16 packs a float32 model's weights in bfloat16 (float32
            accumulation; samples then follow slightly different logits than "cached").

    Returns: (N, C, H, W) int64 levels.
    """
    family = family_of(model)
    if not isinstance(family, ImageFamily):
        raise TypeError(f"sample_image: {type(model).__name__} is not an image model")
    return family.sample_image(model, batch_size, shape=shape, method=method, noise=noise, generator=generator,
                               seed=seed, condition=condition, temperature=temperature, top_k=top_k, top_p=top_p,
                               callback=callback, progress=progress, weight_dtype=weight_dtype)


def teacher_forced_outputs(model: nn.Module, x: torch.Tensor, condition: torch.Tensor | None = None,
                           *, fill: float = 0.0, method: str = "cached") -> torch.Tensor:
    """Run the cached decoder (or, method="fused", the fused kernel with every level forced) over a known
    image x (N, C, H, W) int exactly as the sampler would, and collect every output -> (N, D, H, W), to
    compare with ``model.output_map(model.prepare(x), condition)``.

    At colour sub-step g the channels >= g of the current pixel are unknown (set to `fill`, cached only);
    the output kept for channel group g is the one from sub-step g.
    """
    family = family_of(model)
    if not isinstance(family, ImageFamily):
        raise TypeError(f"teacher_forced_outputs: {type(model).__name__} is not an image model")
    return family.teacher_forced_outputs(model, x, condition, fill=fill, method=method)
