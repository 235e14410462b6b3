"""arkern: masked and causal convolutions as fast torch ops, and fast sampling of convolutional
autoregressive models (PixelCNN, WaveNet families).

This package module is the top of the layers (docs/design.md, "Layers"): it gathers the public faces of
the layers below and adds :func:`generate`, the entry point that may sample over several processes.
"""

from __future__ import annotations

import torch

from arkern import convert, decode, families, masks, models, nn, ops
from arkern.backends import BackendUnavailableError, available_backends, last_backend
from arkern.distributed import generate_distributed
from arkern.evaluation import evaluate
from arkern.pretrained import load, save
from arkern.sampling import generate as generate_local

__version__ = "0.1.0"

__all__ = ["ops", "nn", "masks", "models", "decode", "families", "convert", "generate", "load", "save", "evaluate",
           "available_backends", "last_backend", "BackendUnavailableError", "__version__"]


def generate(model: torch.nn.Module, batch_size: int, *, distributed: bool = False,
             **kwargs: object) -> torch.Tensor | None:
    """Sample `batch_size` sequences or images from `model`: :func:`arkern.sampling.generate` (see it for every
    argument: length / shape, method, temperature, top_k, top_p, generator, seed, noise, condition, callback,
    progress, family options), in this process or split over processes.

    Args:
        distributed: split the batch over the ranks of the default ``torch.distributed`` process group
            (:func:`arkern.distributed.generate_distributed`, which this delegates to with the same
            arguments): call it on every rank with the same model and arguments; each rank samples its
            contiguous share of the rows and rank 0 gathers them. Rank 0 gets exactly the samples of
            ``distributed=False`` with the same seed, generator state or noise (noise, conditioning and
            other per-row tensors are the whole batch's). The process group must already be initialised
            (``torch.distributed.init_process_group`` or
            :func:`arkern.distributed.init_process_group_from_env`); for another group or a timeout, call
            ``generate_distributed`` directly.

    Returns:
        The samples; with ``distributed=True``: that on rank 0, None on the other ranks.

    Raises:
        ValueError: invalid arguments; with ``distributed=True``, no initialised process group.
    """
    if not distributed:
        return generate_local(model, batch_size, **kwargs)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("generate: distributed=True needs an initialised torch.distributed process group; call "
                         "torch.distributed.init_process_group(...) (or, under torchrun, "
                         "arkern.distributed.init_process_group_from_env()) on every rank first, or pass "
                         "distributed=False")
    return generate_distributed(model, batch_size, **kwargs)


