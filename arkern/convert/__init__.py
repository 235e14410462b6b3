"""Bring your own checkpoint: models trained with other projects' PyTorch code, as arkern models.

    model = arkern.convert.load("pixelcnn_cifar.pth", "pixel-cnn-pp", nr_resnet=5, nr_filters=160,
                                nr_logistic_mix=10, input_channels=3)
    images = arkern.generate(model, 16, method="fused")
    arkern.save(model, "out/cifar")          # safetensors + JSON; arkern.load("out/cifar") from then on

``config`` is the upstream constructor's keyword arguments, spelled as upstream spells them (plus the few
hyper-parameters that live outside its module, where a source needs them). The checkpoint is read with
``torch.load(weights_only=True)`` (:mod:`arkern.convert.checkpoint`): never code. Every mismatch between
checkpoint and config names the key and both shapes. The command line: ``arkern convert``.

Each source is one module here with a ``convert(state, **config) -> nn.Module`` function; SOURCES maps the
source's name to that module.
"""

from __future__ import annotations

import ast
import importlib
import os
from collections.abc import Mapping

import torch
from torch import nn

from arkern.convert.checkpoint import StateReader, read_state_dict

__all__ = ["load", "sources", "parse_config", "read_state_dict", "StateReader", "SOURCES"]

# source name -> module (imported on first use) defining ``convert(state, **config) -> nn.Module``
SOURCES: dict[str, str] = {
    "pixel-cnn-pp": "arkern.convert.pixel_cnn_pp",
    "wavenet_vocoder": "arkern.convert.wavenet_vocoder",
    "nv-wavenet": "arkern.convert.nv_wavenet",
    "pytorch-wavenet": "arkern.convert.pytorch_wavenet",
    "pixelcnn-pytorch": "arkern.convert.pixelcnn_pytorch",
    "vqvae-gated-pixelcnn": "arkern.convert.vqvae_gated_pixelcnn",
}


def sources() -> tuple[str, ...]:
    """The known source names, sorted."""
    return tuple(sorted(SOURCES))


def load(checkpoint: str | os.PathLike | Mapping[str, object] | nn.Module, source: str,
         **config: object) -> nn.Module:
    """Convert an upstream checkpoint into an arkern model (eval mode, float32, on the CPU).

    Args:
        checkpoint: a path to a ``torch.save`` file, a state dict (also nested, e.g. ``{"state_dict": ...}``,
            and with DataParallel's ``module.`` prefix), or an upstream module instance.
        source: which project's layout (see :func:`sources`).
        **config: the upstream constructor's keyword arguments.

    The result carries ``model.meta = {"source": source, "config": config}``, which :func:`arkern.save`
    keeps in the JSON.

    Raises:
        ValueError: unknown source (the message lists the known ones), a checkpoint that pickles code, a
            config the source does not accept, or a checkpoint that does not match the config (missing or
            unexpected key, wrong shape: the key and both shapes are named).
        FileNotFoundError: no such checkpoint file.
    """
    if not isinstance(source, str) or source not in SOURCES:
        raise ValueError(f"arkern.convert.load: unknown source {source!r}; known sources: {', '.join(sources())}")
    state = read_state_dict(checkpoint)
    module = importlib.import_module(SOURCES[source])
    with torch.no_grad():
        model = module.convert(state, **config)
    model.eval()
    model.meta = {**getattr(model, "meta", {}), "source": source, "config": dict(config)}
    return model


def parse_config(pairs: list[str] | None) -> dict[str, object]:
    """``["nr_resnet=5", "upsample_scales=[4,4,4,4]", "legacy=true"]`` -> keyword arguments.

    Values are Python or JSON literals (ints, floats, lists, true/false/null also in JSON spelling); anything
    else stays a string.
    """
    config: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--config: expected KEY=VALUE with KEY an identifier, got {pair!r}")
        text = text.strip()
        literal = {"true": "True", "false": "False", "null": "None", "none": "None"}.get(text.lower(), text)
        try:
            config[key] = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            config[key] = text
    return config
