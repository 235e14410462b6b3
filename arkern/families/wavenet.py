"""The WaveNet family: audio sequences (μ-law classes, or samples in [-1, 1] for the continuous heads), sampled
naive, cached or fused (the C++/Triton/CUDA op)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch

from arkern.decode import wavenet as decode_wavenet
from arkern.families.base import ModelFamily
from arkern.models.wavenet import WaveNet, fused_unsupported, packed_family_weights, packed_weights, split_condition
from arkern.ops.wavenet_decode import WaveNetFused
from arkern.ops.wavenet_family_decode import WaveNetFamilyFused


class WaveNetFamily(ModelFamily):
    """:class:`arkern.models.WaveNet`: ``length`` steps, local and global conditioning; one uniform per sample
    (softmax, Gaussian heads) or two (mixture of logistics: noise (B, length, 2)).

    Conditioning: a local (B, C, frames) tensor, or {"local": ..., "global": (B, G)}. Options of
    :meth:`sample`: chunk_size, weight_dtype (fused: float32 or bfloat16), ops (cached: "arkern" or
    "eager"), forced, return_logits (see :func:`arkern.decode.wavenet.sample`). Every method runs
    everywhere: without the compiled kernel, "fused" runs on the op's reference backend.
    """

    name = "wavenet"
    model_types = (WaveNet,)
    checkpoint_types = (WaveNet,)
    size_argument = "length"

    def noise_shape(self, model: WaveNet, batch_size: int, size: int) -> tuple[int, ...]:
        if model.config.head == "logistic_mixture":
            return (batch_size, size, 2)
        return (batch_size, size)

    def prepare_condition(self, model: WaveNet, condition: object, batch_size: int
                          ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """-> (local, global) conditioning tensors (either may be None); shapes are checked by the sampler."""
        try:
            return split_condition(condition)
        except TypeError:
            raise TypeError("generate: condition must be a (B, C, frames) tensor or a dict with keys "
                            "'local'/'global'") from None

    def pack(self, model: WaveNet, weight_dtype: torch.dtype = torch.float32) -> WaveNetFused | WaveNetFamilyFused:
        """``wavenet_generate``'s packing for the nv-wavenet architecture, else ``wavenet_family_generate``'s."""
        if fused_unsupported(model.config) is None:
            return packed_weights(model, weight_dtype)
        return packed_family_weights(model, weight_dtype)

    def fused_weight_dtypes(self, model: WaveNet) -> tuple[torch.dtype, ...]:
        return (torch.float32, torch.bfloat16)

    def sample(self, model: WaveNet, noise: torch.Tensor, *, size: int, method: str, temperature: float,
               top_k: int | None, top_p: float | None, condition: tuple[torch.Tensor | None, torch.Tensor | None],
               callback: Callable[[torch.Tensor, int], None] | None, progress: Callable[[int], None] | None,
               **options: object) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        local, glob = condition
        return decode_wavenet.sample(model, noise, method=method, temperature=temperature, top_k=top_k,
                                     top_p=top_p, cond=local, gcond=glob, callback=callback, progress=progress,
                                     **options)

    def check_items(self, model: WaveNet, y: torch.Tensor, levels: int | None, what: str, name: str) -> None:
        k = model.config.num_classes
        if model.config.head != "softmax":
            raise ValueError(f"evaluate: {name} has a {model.config.head} head; evaluate scores int classes "
                             f"(use model.log_prob on float samples)")
        if y.dim() != 2:
            raise ValueError(f"evaluate: {what} has shape {tuple(y.shape)}, but {name} models sequences (B, T)")
        if model.config.cond_channels or model.config.global_channels:
            raise ValueError(f"evaluate: {name} needs conditioning features, which evaluate does not supply")
        if levels is not None and levels != k:
            raise ValueError(f"evaluate: {what} has {levels} levels, {name} models {k} classes")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
            raise ValueError(f"evaluate: {what} values span [{int(y.min())}, {int(y.max())}], {name} models "
                             f"{k} classes [0, {k - 1}]")

    def log_prob(self, model: WaveNet, y: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """:meth:`WaveNet.log_prob`: y (B, T) -> (B,) nats."""
        return model.log_prob(y, condition)

    def constructor_kwargs(self, model: WaveNet) -> dict:
        return asdict(model.config)
