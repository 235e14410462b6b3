"""Sampling: categorical draws from pre-drawn uniforms, noise, and the `generate` entry point.

Every draw is a deterministic function of (logits, uniform): softmax of logits / temperature, optionally
restricted to the top-k logits and to the top-p nucleus, then inverse CDF in class order. The fused C++
kernels implement the same steps in the same order (float64), so given the same logits and noise every
sampler picks the same classes; only a uniform within float rounding of a CDF boundary could flip.

`generate` draws the noise (per-call generator or seed, or takes `noise`), then dispatches on the model
type to a family sampler (WaveNet: arkern.decode.wavenet). Other families register with
:func:`register_family`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch


def _validate_warpers(temperature: float, top_k: int | None, top_p: float | None, who: str) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{who}: temperature must be a number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"{who}: top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"{who}: top_p must be in (0, 1] or None, got {top_p!r}")


def sample_categorical(logits: torch.Tensor, u: torch.Tensor, *, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Draw one class per row of `logits` by inverse CDF at the uniforms `u`.

    Shapes: logits (..., K), u (...) in [0, 1) -> (...) int64 in [0, K).

    In float64: z = logits / temperature; top_k keeps z >= the k-th largest; e = exp(z - max z); top_p
    keeps, in order of decreasing e (ties: lower class first), the classes whose preceding probability
    mass is < top_p (the smallest set reaching top_p); then the first class whose running sum of kept e
    exceeds u * (sum of kept e). top_k >= K and top_p == 1 change nothing.
    """
    _validate_warpers(temperature, top_k, top_p, "sample_categorical")
    if logits.dim() < 1:
        raise ValueError("sample_categorical: logits must have a class dimension (..., K)")
    if tuple(u.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"sample_categorical: u must have shape {tuple(logits.shape[:-1])} (logits without the "
                         f"class dimension), got {tuple(u.shape)}")
    k = logits.shape[-1]
    z = logits.to(torch.float64) / temperature
    if top_k is not None and top_k < k:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, -torch.inf)
    e = torch.exp(z - z.amax(-1, keepdim=True))
    if top_p is not None and top_p < 1:
        total = torch.cumsum(e, -1)[..., -1:]  # a sequential sum, as in the C++ kernels
        p_sorted, order = torch.sort(e / total, dim=-1, descending=True, stable=True)
        before = torch.cumsum(p_sorted, -1)
        before = torch.cat([torch.zeros_like(before[..., :1]), before[..., :-1]], -1)
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= top_p)
        e = e.masked_fill(drop, 0.0)
    cdf = torch.cumsum(e, -1)
    target = (u.to(torch.float64).unsqueeze(-1) * cdf[..., -1:]).contiguous()
    idx = torch.searchsorted(cdf.contiguous(), target, right=True).squeeze(-1)
    last_kept = (k - 1) - torch.argmax((e.flip(-1) > 0).to(torch.int8), dim=-1)
    return torch.where(idx >= k, last_kept, idx)


def draw_uniforms(shape: tuple[int, ...], *, generator: torch.Generator | None = None, seed: int | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """float64 uniforms in [0, 1) of `shape`, from `generator`, or a fresh generator seeded with `seed`."""
    if generator is not None and seed is not None:
        raise ValueError("draw_uniforms: pass generator or seed, not both")
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


@dataclass(frozen=True)
class Family:
    """How `generate` samples one model family.

    noise_shape(model, batch_size, length) -> the uniforms one run consumes.
    run(model, noise, *, method, temperature, top_k, top_p, condition, callback, progress, **options) ->
        samples; `progress` is called with the number of steps done after each chunk.
    """

    noise_shape: Callable[..., tuple[int, ...]]
    run: Callable[..., object]


# model class path -> "module:noise_shape_fn:run_fn", imported on first use; or a registered Family
_LAZY: dict[str, str] = {"arkern.models.wavenet.WaveNet": "arkern.decode.wavenet:noise_shape:generate"}
_FAMILIES: dict[type, Family] = {}


def register_family(model_type: type, family: Family) -> None:
    """Make `generate` sample models of `model_type` (and subclasses) with `family`."""
    _FAMILIES[model_type] = family


def _family(model: object) -> Family:
    for cls in type(model).__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls]
        path = f"{cls.__module__}.{cls.__qualname__}"
        if path in _LAZY:
            module, shape_fn, run_fn = _LAZY[path].split(":")
            mod = importlib.import_module(module)
            _FAMILIES[cls] = Family(getattr(mod, shape_fn), getattr(mod, run_fn))
            return _FAMILIES[cls]
    raise TypeError(f"generate: no sampler for {type(model).__name__}; register one with "
                    f"arkern.sampling.register_family")


def generate(model: torch.nn.Module, batch_size: int, *, length: int, method: str = "fused",
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, seed: int | None = None, noise: torch.Tensor | None = None,
             condition: object = None, callback: Callable[[torch.Tensor, int], None] | None = None,
             progress: bool = True, **options: object) -> torch.Tensor:
    """Sample `batch_size` sequences of `length` steps from an autoregressive model.

    Args:
        model: e.g. :class:`arkern.models.WaveNet`.
        method: "fused" (C++ kernel, many steps per call), "cached" (per-layer state, Python-driven) or
            "naive" (full forward per step; the reference).
        temperature, top_k, top_p: warpers; the defaults leave the model's distribution unchanged.
        generator / seed: where the uniforms come from (per call; default: torch's global generator).
        noise: pre-drawn float64 uniforms of the family's noise shape (WaveNet: (batch_size, length)).
        condition: the family's conditioning (WaveNet: local (B, C, frames) tensor or
            {"local": ..., "global": (B, G)}).
        callback: called as callback(samples_of_chunk, start) after each chunk (a streamer).
        progress: show a tqdm bar (on stderr) for the run.
        options: family options (WaveNet: chunk_size, weight_dtype, ops).

    Returns:
        (batch_size, length) int64 samples (WaveNet: μ-law classes; see :func:`arkern.audio.mulaw_decode`).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"generate: batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"generate: length must be an int >= 0, got {length!r}")
    _validate_warpers(temperature, top_k, top_p, "generate")
    family = _family(model)
    shape = tuple(family.noise_shape(model, batch_size, length))
    device = next(model.parameters()).device
    if noise is None:
        noise = draw_uniforms(shape, generator=generator, seed=seed, device=device)
    else:
        if generator is not None or seed is not None:
            raise ValueError("generate: pass noise, or generator/seed to draw it, not both")
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"generate: noise must have shape {shape} (batch_size, length), got {got}")
        if noise.dtype != torch.float64:
            raise TypeError(f"generate: noise must be float64 uniforms, got {noise.dtype}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=length, desc=f"{type(model).__name__} {method}", unit="step", leave=False)
    try:
        return family.run(model, noise, method=method, temperature=temperature, top_k=top_k, top_p=top_p,
                          condition=condition, callback=callback, progress=bar.update if bar else None, **options)
    finally:
        if bar is not None:
            bar.close()
