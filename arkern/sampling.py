"""Sampling: categorical draws from pre-drawn uniforms, noise, and the `generate` entry point.

Every draw is a deterministic function of (logits, uniform): softmax of logits / temperature, optionally
restricted to the top-k logits and to the top-p nucleus, then inverse CDF in class order. The fused C++
kernels implement the same steps in the same order (float64), so given the same logits and noise every
sampler picks the same classes; only a uniform within float rounding of a CDF boundary could flip.

`generate` is the one sampling entry point for every model: it validates the arguments, picks the method
(the fastest available unless one is named), draws the noise (per-call generator or seed, or takes
`noise`), then dispatches on the model type to a family sampler (WaveNet: arkern.decode.wavenet; PixelCNN,
GatedPixelCNN, PixelCNNpp: arkern.decode.pixelcnn.sample_image). Other families register with
:func:`register_family`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from arkern.ops._validate import check_warpers as _validate_warpers


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

    noise_shape(model, batch_size, size) -> the uniforms one run consumes (size: the length T, or (H, W)).
    run(model, noise, *, method, temperature, top_k, top_p, condition, callback, progress, **options) ->
        samples; `progress` is called with the number of steps done after each chunk. Image families also
        receive ``shape=(H, W)``.
    size: which size argument `generate` takes: "length" (sequences) or "shape" (images, (H, W)).
    methods(model) -> the methods that can sample this model here, fastest first (the first is the
        default); None: any method name is passed through and the default is "fused".
    """

    noise_shape: Callable[..., tuple[int, ...]]
    run: Callable[..., object]
    size: str = "length"
    methods: Callable[[torch.nn.Module], tuple[str, ...]] | None = None


# ---------------------------------------------------------------- the built-in families

_WAVENET_METHODS = ("fused", "cached", "naive")
IMAGE_METHODS = ("fused", "cached", "naive")  # fastest first


def _wavenet_family() -> Family:
    from arkern.decode import wavenet

    return Family(wavenet.noise_shape, wavenet.generate, "length", lambda model: _WAVENET_METHODS)


def image_methods(model: torch.nn.Module) -> tuple[str, ...]:
    """The image sampling methods usable for `model` in this build, fastest first.

    Read at call time from :mod:`arkern.decode.pixelcnn` (``METHODS``; ``fused_supported(model)``: the
    compiled fused kernel can sample it; ``unsupported_reasons(model)``: why the fused sampler cannot follow
    it at all). "fused" comes first when its C++ kernel runs the model, last when only the op's slow
    reference backend can; "cached" needs the model's cached decoder.
    """
    from arkern.decode import pixelcnn

    built = tuple(getattr(pixelcnn, "METHODS", ("naive",)))
    has_decoder = callable(getattr(model, "decoder", None))
    methods = [m for m in IMAGE_METHODS if m in built] + [m for m in built if m not in IMAGE_METHODS]
    if not has_decoder:
        methods = [m for m in methods if m not in ("cached", "fused")]
    if "fused" in methods:
        compiled = getattr(pixelcnn, "fused_supported", None)
        reasons = getattr(pixelcnn, "unsupported_reasons", None)
        if callable(reasons) and reasons(model):
            methods.remove("fused")
        elif callable(compiled) and not compiled(model):
            methods.remove("fused")
            methods.append("fused")  # runs, but on the reference backend of the fused op: not a default
    return tuple(methods)


def _image_noise_shape(model: torch.nn.Module, batch_size: int, shape: tuple[int, int]) -> tuple[int, ...]:
    return tuple(model.noise_shape(batch_size, *shape))


def _image_condition(model: torch.nn.Module, condition: object, batch_size: int) -> torch.Tensor | None:
    """condition as given to `generate` -> int64 labels (batch_size,) on the model's device, or None.

    Accepts None, one int label (the whole batch), a sequence of ints, or an int tensor (N,).
    """
    if condition is None:
        return None
    device = next(model.parameters()).device
    if isinstance(condition, bool):
        raise TypeError(f"generate: condition must be int class labels, got {condition!r}")
    if isinstance(condition, int):
        return torch.full((batch_size,), condition, dtype=torch.int64, device=device)
    if isinstance(condition, (list, tuple)):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in condition):
            raise TypeError(f"generate: condition must be int class labels, got {condition!r}")
        condition = torch.tensor(condition, dtype=torch.int64)
    if not isinstance(condition, torch.Tensor):
        raise TypeError(f"generate: condition must be an int, a list of ints or an int tensor (N,), got "
                        f"{type(condition).__name__}")
    return condition.to(device)


def _image_run(model: torch.nn.Module, noise: torch.Tensor, *, shape: tuple[int, int], method: str,
               temperature: float, top_k: int | None, top_p: float | None, condition: object,
               callback: Callable[[torch.Tensor, int], None] | None, progress: Callable[[int], None] | None,
               **options: object) -> torch.Tensor:
    """Sample images with :func:`arkern.decode.pixelcnn.sample_image` -> (N, C, H, W) int64 levels.

    callback(rows (N, C, 1, W), i) is called after each completed row i; progress(1) likewise.
    """
    from arkern.decode.pixelcnn import sample_image

    batch_size = noise.shape[0]
    labels = _image_condition(model, condition, batch_size)
    height, width = shape
    on_pixel = None
    if callback is not None or progress is not None:
        def on_pixel(i: int, j: int, image: torch.Tensor) -> None:
            if j == width - 1:
                if callback is not None:
                    callback(image[:, :, i:i + 1, :], i)
                if progress is not None:
                    progress(1)

    return sample_image(model, batch_size, shape=(height, width), method=method, noise=noise, condition=labels,
                        temperature=temperature, top_k=top_k, top_p=top_p, callback=on_pixel, progress=False,
                        **options)


def _image_family() -> Family:
    return Family(_image_noise_shape, _image_run, "shape", image_methods)


# model class path -> Family factory, called on first use (no model import at arkern.sampling import)
_LAZY: dict[str, Callable[[], Family]] = {
    "arkern.models.wavenet.WaveNet": _wavenet_family,
    "arkern.models.pixelcnn.CategoricalImageModel": _image_family,  # PixelCNN, GatedPixelCNN
    "arkern.models.pixelcnnpp.PixelCNNpp": _image_family,
}
_FAMILIES: dict[type, Family] = {}


def register_family(model_type: type, family: Family) -> None:
    """Make `generate` sample models of `model_type` (and subclasses) with `family`."""
    _FAMILIES[model_type] = family


def _family(model: object) -> Family:
    for cls in type(model).__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls]
        factory = _LAZY.get(f"{cls.__module__}.{cls.__qualname__}")
        if factory is not None:
            _FAMILIES[cls] = factory()
            return _FAMILIES[cls]
    raise TypeError(f"generate: no sampler for {type(model).__name__}; register one with "
                    f"arkern.sampling.register_family")


def _check_size(family: Family, model: object, length: object, shape: object) -> int | tuple[int, int]:
    name = type(model).__name__
    if family.size == "shape":
        if length is not None:
            raise ValueError(f"generate: {name} samples images: pass shape=(height, width), not length")
        if shape is None:
            raise ValueError(f"generate: {name} samples images: pass shape=(height, width)")
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
            raise ValueError(f"generate: shape must be (height, width) with ints >= 1, got {shape!r}")
        return int(shape[0]), int(shape[1])
    if shape is not None:
        raise ValueError(f"generate: {name} samples sequences: pass length=, not shape")
    if length is None:
        raise ValueError(f"generate: {name} samples sequences: pass length= (number of steps)")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"generate: length must be an int >= 0, got {length!r}")
    return length


def _pick_method(family: Family, model: torch.nn.Module, method: str | None) -> str:
    if family.methods is None:
        return "fused" if method is None else method
    available = family.methods(model)
    if method is None:
        if not available:
            raise ValueError(f"generate: no sampling method can run {type(model).__name__} here")
        return available[0]
    if method in available:
        return method
    known = tuple(dict.fromkeys((*_WAVENET_METHODS, *IMAGE_METHODS, *available)))
    if method not in known:
        raise ValueError(f"generate: method must be one of {known} (or None for the fastest), got {method!r}")
    raise ValueError(f"generate: method {method!r} is not available for {type(model).__name__} in this build; "
                     f"available: {', '.join(available)}")


def available_methods(model: torch.nn.Module) -> tuple[str, ...]:
    """The methods `generate` can use for `model` in this build, fastest first (the first is the default)."""
    family = _family(model)
    return family.methods(model) if family.methods is not None else ("fused",)


def default_method(model: torch.nn.Module) -> str:
    """The method `generate` uses for `model` when none is given: the fastest available here."""
    return _pick_method(_family(model), model, None)


def _generate_distributed(model: torch.nn.Module, batch_size: int, **kwargs: object) -> torch.Tensor | None:
    """generate(..., distributed=True): arkern.distributed.generate_distributed on the default process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("generate: distributed=True needs an initialised torch.distributed process group; call "
                         "torch.distributed.init_process_group(...) (or, under torchrun, "
                         "arkern.distributed.init_process_group_from_env()) on every rank first, or pass "
                         "distributed=False")
    from arkern.distributed import generate_distributed  # imported here: arkern.distributed imports this module

    return generate_distributed(model, batch_size, **kwargs)


def generate(model: torch.nn.Module, batch_size: int, *, length: int | None = None,
             shape: tuple[int, int] | None = None, method: str | None = None, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             seed: int | None = None, noise: torch.Tensor | None = None, condition: object = None,
             callback: Callable[[torch.Tensor, int], None] | None = None, progress: bool = True,
             distributed: bool = False, **options: object) -> torch.Tensor | None:
    """Sample `batch_size` sequences (WaveNet) or images (PixelCNN family) from an autoregressive model.

    Args:
        model: e.g. :class:`arkern.models.WaveNet`, :class:`arkern.models.GatedPixelCNN`,
            :class:`arkern.models.PixelCNN`, :class:`arkern.models.PixelCNNpp`, or ``arkern.load("digits")``.
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
        distributed: split the batch over the ranks of the default ``torch.distributed`` process group
            (:func:`arkern.distributed.generate_distributed`, which this delegates to with the same
            arguments): call it on every rank with the same model and arguments; each rank samples its
            contiguous share of the rows and rank 0 gathers them. Rank 0 gets exactly the samples of
            ``distributed=False`` with the same seed, generator state or noise (noise, conditioning and
            other per-row tensors are the whole batch's). The process group must already be initialised
            (``torch.distributed.init_process_group`` or
            :func:`arkern.distributed.init_process_group_from_env`); for another group or a timeout, call
            ``generate_distributed`` directly.
        options: family options (WaveNet: chunk_size, weight_dtype, ops).

    Returns:
        WaveNet: (batch_size, length) int64 μ-law classes (see :func:`arkern.audio.mulaw_decode`).
        Images: (batch_size, C, H, W) int64 levels in [0, K).
        With ``distributed=True``: that on rank 0, None on the other ranks.

    Raises:
        ValueError: invalid arguments; with ``distributed=True``, no initialised process group.
    """
    if distributed:
        return _generate_distributed(model, batch_size, length=length, shape=shape, method=method,
                                     temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                                     seed=seed, noise=noise, condition=condition, callback=callback,
                                     progress=progress, **options)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"generate: batch_size must be an int >= 1, got {batch_size!r}")
    _validate_warpers(temperature, top_k, top_p, "generate")
    family = _family(model)
    size = _check_size(family, model, length, shape)
    method = _pick_method(family, model, method)
    if generator is not None and seed is not None:
        raise ValueError("generate: pass generator or seed, not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"generate: seed must be an int, got {seed!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"generate: callback must be callable, got {type(callback).__name__}")
    noise_shape = tuple(family.noise_shape(model, batch_size, size))
    device = next(model.parameters()).device
    if noise is None:
        noise = draw_uniforms(noise_shape, generator=generator, seed=seed, device=device)
    else:
        if generator is not None or seed is not None:
            raise ValueError("generate: pass noise, or generator/seed to draw it, not both")
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != noise_shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"generate: noise must have shape {noise_shape}, got {got}")
        if noise.dtype != torch.float64:
            raise TypeError(f"generate: noise must be float64 uniforms, got {noise.dtype}")
    if family.size == "shape":
        options = {**options, "shape": size}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total, unit = (size[0], "row") if family.size == "shape" else (size, "step")
        bar = tqdm(total=total, desc=f"{type(model).__name__} {method}", unit=unit, leave=False, delay=1.0)
    try:
        return family.run(model, noise, method=method, temperature=temperature, top_k=top_k, top_p=top_p,
                          condition=condition, callback=callback, progress=bar.update if bar else None, **options)
    finally:
        if bar is not None:
            bar.close()
