"""The PixelCNN++ family: a discretized logistic mixture per pixel (one draw per pixel, 1 + C uniforms),
its cached decoder, and the fused C++ sampler ``arkern.ops.pixelcnnpp_generate`` (CPU only; float32 weights, or
``weight_dtype=torch.bfloat16``: the bfloat16 precision of docs/design.md)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from arkern.decode.pixelcnnpp import PixelCNNppDecoder, sample_fused_pp, teacher_forced_fused_pp
from arkern.families.image import ImageFamily
from arkern.models.pixelcnnpp import PixelCNNpp
from arkern.models.pixelcnnpp_packing import pack_pixelcnnpp, pixelcnnpp_fused_reasons
from arkern.ops.pixelcnnpp_decode import BACKENDS, PixelCNNppFused

__all__ = ["PixelCNNppFamily"]


class PixelCNNppFamily(ImageFamily):
    """:class:`arkern.models.PixelCNNpp`: unconditional; temperature only (no top_k / top_p); option of the fused
    sampler: weight_dtype."""

    name = "pixelcnnpp"
    model_types = (PixelCNNpp,)
    checkpoint_types = (PixelCNNpp,)

    def has_decoder(self, model: nn.Module) -> bool:
        return True

    def decoder(self, model: PixelCNNpp) -> PixelCNNppDecoder:
        return PixelCNNppDecoder(model)

    def fused_reasons(self, model: PixelCNNpp) -> list[str]:
        # the op has no slow fallback, only its C++ backend: an unbuilt kernel is a reason too
        cpu = torch.device("cpu")
        return pixelcnnpp_fused_reasons(model) + BACKENDS.not_supported_reasons("cpu", cpu, torch.float32)

    def fused_compiled(self, model: nn.Module) -> bool:
        return True  # fused_reasons already lists an unbuilt kernel

    def pack(self, model: PixelCNNpp, weight_dtype: torch.dtype | None = None) -> PixelCNNppFused:
        return pack_pixelcnnpp(model, weight_dtype)

    def fused_weight_dtypes(self, model: nn.Module) -> tuple[torch.dtype, ...]:
        return (torch.float32, torch.bfloat16)

    def sample_fused(self, model: PixelCNNpp, noise: torch.Tensor, condition: torch.Tensor | None,
                     callback: Callable[[int, int, torch.Tensor], None] | None, progress: bool,
                     warpers: dict, weight_dtype: torch.dtype | None) -> torch.Tensor:
        """Whole images in one call (a callback runs afterwards, for every pixel, on the finished image)."""
        if warpers["top_k"] is not None or warpers["top_p"] is not None:
            raise ValueError("PixelCNNpp: top_k / top_p do not apply to a logistic mixture (use temperature)")
        if weight_dtype not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"sample_image: the fused PixelCNN++ kernel packs float32 or bfloat16 weights, "
                             f"got {weight_dtype}")
        return sample_fused_pp(self.pack(model, weight_dtype), noise, temperature=warpers["temperature"],
                               callback=callback)

    def teacher_forced_fused(self, model: PixelCNNpp, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        return teacher_forced_fused_pp(self.pack(model), x)

    def constructor_kwargs(self, model: PixelCNNpp) -> dict:
        """Read off the built model (so :func:`arkern.save` needs no kwargs, e.g. for converted checkpoints)."""
        return {"image_channels": model.image_channels, "num_bins": model.num_classes,
                "filters": model.u_init.out_channels, "num_resnets": len(model.up_u[0]),
                "num_mixtures": model.num_mixtures, "dropout": model.dn_u[1][0].dropout.p}
