"""Likelihood evaluation: negative log-likelihood of held-out data under any arkern model.

    result = arkern.evaluate(arkern.load("mnist"), "mnist-test")
    # {'nll_nats': ..., 'bits_per_dim': ..., 'count': 500, 'dims': 784, 'conditional': True, 'data': 'mnist-test'}

The NLL comes from one batched teacher-forced forward per batch (the models' default, fastest backends;
no sampling), as the model's family computes it (:meth:`arkern.families.ModelFamily.log_prob`): image models
(PixelCNN, GatedPixelCNN, PixelCNN++) through their ``log_prob``; WaveNet, which gives teacher-forced logits
but no ``log_prob``, through the cross-entropy of its logits with the sequence.
``nll_nats`` is the mean over items of -log p(item) in nats (per image, or per sequence for WaveNet);
``bits_per_dim`` divides it by the dimensions of an item (C*H*W sub-pixels, or T samples) and ln 2.

Data that does not fit the model is refused before any forward runs, naming both sides (the family's
:meth:`~arkern.families.ModelFamily.check_items`, and the labels here): a different image
size, channel count or number of levels (e.g. 256-level grey digits into a binary model), images into an
audio model or sequences into an image model, labels outside a conditional model's classes, or no labels
for a conditional model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from arkern.families import family_of

__all__ = ["evaluate", "Data"]

Data = str | torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]


def _model_name(model: nn.Module) -> str:
    meta = getattr(model, "meta", None) or {}
    return f"{type(model).__name__} {meta['name']!r}" if "name" in meta else type(model).__name__


def _resolve(data: Data) -> tuple[torch.Tensor, torch.Tensor | None, int | None, str]:
    """data -> (items, labels or None, number of levels if known, description)."""
    if isinstance(data, str):
        from arkern.datasets import by_name

        items, labels, levels = by_name(data)
        return items, labels, levels, data
    if isinstance(data, tuple):
        if len(data) != 2 or not isinstance(data[0], torch.Tensor) or not (
                data[1] is None or isinstance(data[1], torch.Tensor)):
            raise TypeError("evaluate: data tuple must be (items tensor, labels tensor or None)")
        return data[0], data[1], None, "data"
    if isinstance(data, torch.Tensor):
        return data, None, None, "data"
    raise TypeError(f"evaluate: data must be a data set name, a tensor, or (tensor, labels), got "
                    f"{type(data).__name__}")


def _check_labels(model: nn.Module, labels: torch.Tensor | None, n: int, what: str) -> torch.Tensor | None:
    """The labels to condition on: None for an unconditional model, else validated (n,) int64."""
    num_labels = family_of(model).num_labels(model)
    name = _model_name(model)
    if not num_labels:
        return None  # an unconditional model ignores the labels that come with a data set
    if labels is None:
        raise ValueError(f"evaluate: {name} is class-conditional ({num_labels} classes); {what} has no labels "
                         f"(pass (images, labels))")
    if labels.shape != (n,) or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"evaluate: labels must be integers of shape ({n},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        raise ValueError(f"evaluate: {what} labels span [{int(labels.min())}, {int(labels.max())}], {name} "
                         f"knows classes [0, {num_labels - 1}]")
    return labels.to(torch.int64)


def evaluate(model: nn.Module, data: Data, *, batch: int = 100, progress: bool = False) -> dict:
    """Held-out negative log-likelihood of `data` under `model`.

    Args:
        model: any arkern model (image family or WaveNet), e.g. from :func:`arkern.load`.
        data: a data set name (see :data:`arkern.datasets.NAMES`, e.g. "mnist-test"), a tensor of items
            (images (N, C, H, W) or sequences (N, T), int levels), or (items, labels (N,) or None); labels
            are required by class-conditional models and ignored by unconditional ones.
        batch: items per forward (>= 1); progress: a tqdm bar over the batches.

    Returns:
        {"nll_nats": mean -log p per item in nats, "bits_per_dim": nll_nats / (dims * ln 2), "count": N,
        "dims": sub-pixels or samples per item, "conditional": whether labels were used, "data": name}.

    Raises:
        ValueError: data that does not fit the model (shape, channels, levels, labels), bad batch.
        TypeError: data of an unsupported type. ImportError: a named data set whose optional dependency is
            missing (the message names the extra, e.g. ``arkern[data]``).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"evaluate: batch must be an int >= 1, got {batch!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"evaluate: model must be an arkern model (nn.Module), got {type(model).__name__}")
    items, labels, levels, what = _resolve(data)
    if items.is_floating_point() or items.is_complex() or items.dtype == torch.bool:
        raise TypeError(f"evaluate: {what} must hold integer levels, got dtype {items.dtype}")
    family = family_of(model)
    family.check_items(model, items, levels, what, _model_name(model))
    n = items.shape[0]
    if n == 0:
        raise ValueError(f"evaluate: {what} is empty")
    labels = _check_labels(model, labels, n, what)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    starts = range(0, n, batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"evaluate {what}", unit="batch", leave=False)
    total = 0.0
    try:
        with torch.no_grad():
            for s in starts:
                x = items[s:s + batch].to(device=device, dtype=torch.int64)
                cond = None if labels is None else labels[s:s + batch].to(device)
                total -= float(family.log_prob(model, x, cond).double().sum())
    finally:
        model.train(was_training)
    dims = math.prod(items.shape[1:])
    nll = total / n
    return {"nll_nats": nll, "bits_per_dim": nll / (dims * math.log(2.0)), "count": n, "dims": dims,
            "conditional": labels is not None, "data": what}
