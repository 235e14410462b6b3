"""Packed weights of a model for a fused decode kernel, kept per model and re-packed only when a parameter
changed (in place or replaced) — packing is not free, and samplers are called in loops."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import TypeVar

from torch import nn

P = TypeVar("P")
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_pack(model: nn.Module, key: Hashable, pack: Callable[[], P]) -> P:
    """`pack()` for (model, key), reused while every parameter keeps its version, storage and dtype."""
    params = list(model.parameters())
    version = tuple((p._version, p.data_ptr(), p.dtype) for p in params)
    per_model = _cache.setdefault(model, {})
    hit = per_model.get(key)
    if hit is None or hit[0] != version:
        hit = (version, pack())
        per_model[key] = hit
    return hit[1]
