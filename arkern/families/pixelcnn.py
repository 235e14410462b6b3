"""The PixelCNN and Gated PixelCNN families: categorical images, colour sub-steps, a cached decoder each, and
the fused C++ sampler ``arkern.ops.pixelcnn_generate`` (also runnable, slowly, on its reference backend)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from arkern.decode.pixelcnn import GatedPixelCNNDecoder, PixelCNNDecoder, sample_fused, teacher_forced_fused
from arkern.families.image import ImageFamily
from arkern.models.gated_pixelcnn import GatedPixelCNN
from arkern.models.pixelcnn import PixelCNN
from arkern.models.pixelcnn_packing import (
    condition_bias,
    gated_pixelcnn_fused_reasons,
    pack_gated_pixelcnn,
    pack_pixelcnn,
    pixelcnn_fused_reasons,
)
from arkern.ops.pixelcnn_decode import BACKENDS, PixelCNNFused

__all__ = ["PixelCNNFamily", "GatedPixelCNNFamily"]


class PixelCNNFamily(ImageFamily):
    """:class:`arkern.models.PixelCNN`: unconditional; option of the fused sampler: weight_dtype."""

    name = "pixelcnn"
    model_types = (PixelCNN,)
    checkpoint_types = (PixelCNN,)

    def has_decoder(self, model: nn.Module) -> bool:
        return True

    def decoder(self, model: PixelCNN) -> PixelCNNDecoder:
        return PixelCNNDecoder(model)

    def fused_reasons(self, model: PixelCNN) -> list[str]:
        return pixelcnn_fused_reasons(model)

    def constructor_kwargs(self, model: PixelCNN) -> dict:
        """The constructor arguments the model was built with (JSON-ready)."""
        return dict(model.kwargs)

    def fused_compiled(self, model: nn.Module) -> bool:
        dtype = next(model.parameters()).dtype
        return not BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), dtype)

    def pack(self, model: PixelCNN, weight_dtype: torch.dtype | None = None) -> PixelCNNFused:
        return pack_pixelcnn(model, weight_dtype)

    def fused_weight_dtypes(self, model: nn.Module) -> tuple[torch.dtype, ...]:
        dtype = next(model.parameters()).dtype
        return (dtype, torch.bfloat16) if dtype == torch.float32 else (dtype,)

    def fused_condition(self, model: nn.Module, packed: PixelCNNFused, condition: torch.Tensor | None
                        ) -> torch.Tensor | None:
        """The conditioning input of the fused op (None: unconditional)."""
        return None

    def sample_fused(self, model: nn.Module, noise: torch.Tensor, condition: torch.Tensor | None,
                     callback: Callable[[int, int, torch.Tensor], None] | None, progress: bool,
                     warpers: dict, weight_dtype: torch.dtype | None) -> torch.Tensor:
        packed = self.pack(model, weight_dtype)
        return sample_fused(packed, noise, cond=self.fused_condition(model, packed, condition), callback=callback,
                            progress=progress, **warpers)

    def teacher_forced_fused(self, model: nn.Module, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        packed = self.pack(model)
        return teacher_forced_fused(packed, x, self.fused_condition(model, packed, condition))


class GatedPixelCNNFamily(PixelCNNFamily):
    """:class:`arkern.models.GatedPixelCNN`: optionally class-conditional (labels (N,) or one int)."""

    name = "gated_pixelcnn"
    model_types = (GatedPixelCNN,)
    checkpoint_types = (GatedPixelCNN,)

    def decoder(self, model: GatedPixelCNN) -> GatedPixelCNNDecoder:
        return GatedPixelCNNDecoder(model)

    def fused_reasons(self, model: GatedPixelCNN) -> list[str]:
        return gated_pixelcnn_fused_reasons(model)

    def num_labels(self, model: GatedPixelCNN) -> int | None:
        return model.num_labels

    def pack(self, model: GatedPixelCNN, weight_dtype: torch.dtype | None = None) -> PixelCNNFused:
        return pack_gated_pixelcnn(model, weight_dtype)

    def fused_condition(self, model: GatedPixelCNN, packed: PixelCNNFused, condition: torch.Tensor | None
                        ) -> torch.Tensor | None:
        return condition_bias(model, packed, condition)
