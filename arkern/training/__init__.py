"""Training recipes of the bundled models (``arkern train digits|tones|mnist``).

Each recipe module (:mod:`arkern.training.digits`, :mod:`arkern.training.tones`, :mod:`arkern.training.mnist`;
``mnist-unconditional`` is the mnist recipe without labels, the baseline of the same size) builds its data set
locally (no download), trains with :func:`fit` and writes a checkpoint with :func:`arkern.pretrained.save`.
``arkern train NAME --out arkern/pretrained`` reproduces the bundled weights (bit-exactly only with the
same torch build and thread count; float reductions depend on both).
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

RECIPES = ("digits", "tones", "mnist", "mnist-unconditional")

__all__ = ["RECIPES", "train", "fit"]


def train(name: str, out: str | Path = ".", *, epochs: int | None = None, seed: int = 0,
          threads: int | None = None, progress: bool = True, log: Callable[[str], None] = print
          ) -> tuple[Path, Path]:
    """Run recipe `name` and write ``OUT/NAME.json`` + ``OUT/NAME.safetensors``; returns both paths.

    epochs: None = the recipe's default (what the bundled model used); threads: torch intra-op threads;
    progress: a per-epoch progress bar (the recipes that have one: mnist).
    """
    if name not in RECIPES:
        raise ValueError(f"train: unknown recipe {name!r}; choose from {RECIPES}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"train: epochs must be an int >= 1, got {epochs!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    recipe = importlib.import_module(f"arkern.training.{name.split('-')[0]}")
    options = {"progress": progress, "conditional": name == "mnist"} if name.startswith("mnist") else {}
    return recipe.train(Path(out), epochs=epochs or recipe.EPOCHS, seed=seed, log=log, **options)


def fit(model: nn.Module, loss_fn: Callable[[object], torch.Tensor], batches: Callable[[int], Iterable[object]],
        *, epochs: int, steps_per_epoch: int, lr: float, log: Callable[[str], None] = print,
        evaluate: Callable[[], dict[str, float]] | None = None, clip: float = 1.0) -> dict[str, float]:
    """Adam with a one-cycle learning rate, gradient clipping; returns the last epoch's figures.

    batches(epoch) yields `steps_per_epoch` batches; loss_fn(batch) -> scalar loss (nats per element);
    evaluate() -> extra figures logged after each epoch (run in eval mode, no grad).
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.2)
    start = time.perf_counter()
    figures: dict[str, float] = {}
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for batch in batches(epoch):
            loss = loss_fn(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            total, count = total + loss.item(), count + 1
        figures = {"train_bits": total / max(count, 1) / math.log(2.0)}
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                figures.update(evaluate())
        shown = "  ".join(f"{k} {v:.4f}" for k, v in figures.items())
        log(f"epoch {epoch + 1}/{epochs}  {shown}  ({time.perf_counter() - start:.0f} s)")
    model.eval()
    figures["seconds"] = round(time.perf_counter() - start, 1)
    return figures
