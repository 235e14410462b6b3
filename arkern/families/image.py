"""What every image family shares (PixelCNN, Gated PixelCNN, PixelCNN++ and user image models): ``shape``
runs, the model's own noise shape, class-label conditioning, and the three samplers behind
:meth:`ImageFamily.sample_image`. A family adds its cached decoder, its fused sampler and the reasons why
the fused kernel cannot run a model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from arkern.decode.image import ImageDecoder, sample_raster, teacher_forced_cached
from arkern.decode.methods import METHODS
from arkern.distributions import draw_uniforms
from arkern.families.base import ModelFamily
from arkern.models.pixelcnn import CategoricalImageModel

__all__ = ["ImageFamily", "CategoricalImageFamily", "draw_noise", "is_code_prior"]


def is_code_prior(model: nn.Module) -> bool:
    """True for a prior over grids of discrete codes (``model.meta["kind"] == "codes"``, e.g. a converted
    VQ-VAE prior): one channel, and :func:`arkern.generate` returns (N, H, W) grids instead of (N, 1, H, W)."""
    return (getattr(model, "meta", None) or {}).get("kind") == "codes" and model.image_channels == 1


def draw_noise(model: nn.Module, batch_size: int, shape: tuple[int, int], *,
               generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
    """The uniforms one image batch consumes: float64 of shape ``model.noise_shape(N, H, W)``, in [0, 1)."""
    return draw_uniforms(tuple(model.noise_shape(batch_size, *shape)), generator=generator, seed=seed)


class ImageFamily(ModelFamily):
    """Images of (H, W) sampled in raster order; one uniform per draw as ``model.noise_shape(N, H, W)``."""

    size_argument = "shape"

    # ------------------------------------------------------------------ what a family adds
    def has_decoder(self, model: nn.Module) -> bool:
        """True when :meth:`decoder` gives `model` a cached decoder."""
        return False

    def decoder(self, model: nn.Module) -> ImageDecoder | None:
        """A new cached decoder of `model` (None: the family has none, only "naive" and maybe "fused")."""
        return None

    def fused_reasons(self, model: nn.Module) -> list[str]:
        """Why method="fused" cannot sample `model` at all (empty when it can)."""
        return [f"fused sampling supports PixelCNN, GatedPixelCNN and PixelCNNpp, not {type(model).__name__} "
                "(use method='cached')"]

    def fused_compiled(self, model: nn.Module) -> bool:
        """True when the compiled kernel (not only the op's slow reference backend) runs `model`."""
        return False

    def sample_fused(self, model: nn.Module, noise: torch.Tensor, condition: torch.Tensor | None,
                     callback: Callable[[int, int, torch.Tensor], None] | None, progress: bool,
                     warpers: dict, weight_dtype: torch.dtype | None) -> torch.Tensor:
        """The fused sampler (arguments validated) -> (N, C, H, W) int64."""
        raise ValueError("sample_image: method='fused' cannot sample this model: "
                         + "; ".join(self.fused_reasons(model)))

    def teacher_forced_fused(self, model: nn.Module, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """The fused kernel's outputs over a known image (every level forced) -> (N, D, H, W)."""
        raise ValueError("teacher_forced_outputs: method='fused' cannot run this model: "
                         + "; ".join(self.fused_reasons(model)))

    # ------------------------------------------------------------------ the protocol
    def method_reasons(self, model: nn.Module) -> dict[str, str]:
        reasons = {}
        if not self.has_decoder(model):
            why = f"{type(model).__name__} has no cached decoder"
            reasons = {"cached": why, "fused": why}
        else:
            fused = self.fused_reasons(model)
            if fused:
                reasons["fused"] = "; ".join(fused)
        return reasons

    def methods(self, model: nn.Module) -> tuple[str, ...]:
        """Fastest first; "fused" last when only the op's slow reference backend would run it."""
        methods = list(super().methods(model))
        if "fused" in methods and not self.fused_compiled(model):
            methods.remove("fused")
            methods.append("fused")
        return tuple(methods)

    def check_size(self, model: nn.Module, size: object) -> tuple[int, int]:
        """(H, W) with ints >= 1 that the model can handle (``model.check_image_size``)."""
        height, width = super().check_size(model, size)
        model.check_image_size(height, width)
        return height, width

    def check_items(self, model: nn.Module, x: torch.Tensor, levels: int | None, what: str, name: str) -> None:
        c, k = model.image_channels, model.num_classes
        if x.dim() != 4:
            raise ValueError(f"evaluate: {what} has shape {tuple(x.shape)}, but {name} models images "
                             f"(N, {c}, H, W)")
        if x.shape[1] != c:
            raise ValueError(f"evaluate: {what} has {x.shape[1]} channel(s) {tuple(x.shape)}, {name} models "
                             f"{c}-channel images")
        shape = tuple((getattr(model, "meta", None) or {}).get("shape") or ())
        if len(shape) == 2 and tuple(x.shape[2:]) != shape:
            raise ValueError(f"evaluate: {what} images are {x.shape[2]}x{x.shape[3]}, {name} was trained on "
                             f"{shape[0]}x{shape[1]} images")
        model.check_image_size(x.shape[2], x.shape[3])
        top = int(x.max()) if x.numel() else 0
        if levels is not None and levels != k:
            raise ValueError(f"evaluate: {what} has {levels} levels per pixel, {name} models {k} levels")
        if x.numel() and (int(x.min()) < 0 or top >= k):
            raise ValueError(f"evaluate: {what} values span [{int(x.min())}, {top}] (at least {top + 1} levels), "
                             f"{name} models {k} levels [0, {k - 1}]")

    def log_prob(self, model: nn.Module, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """The image model's own log_prob. x (N, C, H, W) int -> (N,)."""
        return model.log_prob(x, condition)

    def noise_shape(self, model: nn.Module, batch_size: int, size: tuple[int, int]) -> tuple[int, ...]:
        return tuple(model.noise_shape(batch_size, *size))

    def prepare_condition(self, model: nn.Module, condition: object, batch_size: int) -> torch.Tensor | None:
        """None, one int label (the whole batch), a sequence of ints, or an int tensor (N,) -> int64 labels
        (batch_size,) on the model's device, or None."""
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

    def sample(self, model: nn.Module, noise: torch.Tensor, *, size: tuple[int, int], method: str,
               temperature: float, top_k: int | None, top_p: float | None, condition: torch.Tensor | None,
               callback: Callable[[torch.Tensor, int], None] | None, progress: Callable[[int], None] | None,
               **options: object) -> torch.Tensor:
        """-> (N, C, H, W) int64 levels, or (N, H, W) codes for a code prior (:func:`is_code_prior`);
        callback(rows (N, C, 1, W), i) — (N, 1, W) for a code prior — and progress(1) after each row i."""
        height, width = size
        codes = is_code_prior(model)
        on_pixel = None
        if callback is not None or progress is not None:
            def on_pixel(i: int, j: int, image: torch.Tensor) -> None:
                if j == width - 1:
                    if callback is not None:
                        callback(image[:, 0, i:i + 1, :] if codes else image[:, :, i:i + 1, :], i)
                    if progress is not None:
                        progress(1)

        out = self.sample_image(model, noise.shape[0], shape=size, method=method, noise=noise, condition=condition,
                                temperature=temperature, top_k=top_k, top_p=top_p, callback=on_pixel, **options)
        return out[:, 0] if codes else out

    # ------------------------------------------------------------------ the image sampler
    def sample_image(self, model: nn.Module, batch_size: int, *, shape: tuple[int, int], method: str = "cached",
                     noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     seed: int | None = None, condition: torch.Tensor | None = None, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None,
                     callback: Callable[[int, int, torch.Tensor], None] | None = None,
                     progress: bool = False, weight_dtype: torch.dtype | None = None) -> torch.Tensor:
        """See :func:`arkern.sampling.sample_image`."""
        if method not in METHODS:
            raise ValueError(f"sample_image: method must be one of {METHODS}, got {method!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"sample_image: batch_size must be a positive int, got {batch_size!r}")
        if method == "cached" and not self.has_decoder(model):
            raise ValueError(f"sample_image: {type(model).__name__} has no cached decoder; use method='naive'")
        if method == "fused":
            reasons = self.method_reasons(model).get("fused")
            if reasons:
                raise ValueError("sample_image: method='fused' cannot sample this model: " + reasons)
        elif weight_dtype is not None:
            raise ValueError(f"sample_image: weight_dtype is an option of method='fused', not {method!r}")
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2 and all(isinstance(s, int) for s in shape)):
            raise ValueError(f"sample_image: shape must be (height, width), got {shape!r}")
        height, width = int(shape[0]), int(shape[1])
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
                    return self.sample_fused(model, noise, condition, callback, progress, warpers, weight_dtype)
                decoder = self.decoder(model) if method == "cached" else None
                return sample_raster(model, noise.to(param.device), decoder=decoder, condition=condition,
                                     callback=callback, progress=progress, **warpers)
        finally:
            model.train(was_training)

    def teacher_forced_outputs(self, model: nn.Module, x: torch.Tensor, condition: torch.Tensor | None = None, *,
                               fill: float = 0.0, method: str = "cached") -> torch.Tensor:
        """See :func:`arkern.sampling.teacher_forced_outputs`."""
        model.check_image(x)
        if method == "fused":
            model.check_condition(condition, x.shape[0])
            return self.teacher_forced_fused(model, x, condition)
        if method != "cached":
            raise ValueError(f"teacher_forced_outputs: method must be 'cached' or 'fused', got {method!r}")
        if not self.has_decoder(model):
            raise ValueError(f"teacher_forced_outputs: {type(model).__name__} has no cached decoder")
        decoder = self.decoder(model)
        return teacher_forced_cached(model, decoder, x, condition, fill=fill)


class CategoricalImageFamily(ImageFamily):
    """A user's :class:`arkern.models.pixelcnn.CategoricalImageModel`: naive sampling, and cached when the
    model brings its own decoder (a ``decoder()`` method returning an :class:`ImageDecoder`)."""

    name = "image"
    model_types = (CategoricalImageModel,)

    def has_decoder(self, model: nn.Module) -> bool:
        return callable(getattr(model, "decoder", None))

    def decoder(self, model: nn.Module) -> ImageDecoder | None:
        return model.decoder() if self.has_decoder(model) else None
