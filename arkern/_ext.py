"""Loading the optional compiled extension `arkern._C` (CPU kernels, and CUDA kernels when built).

The package works without it: then only the `reference` backend is available, and arkern says so once.
`ARKERN_USE_CPP=0` skips loading. `ARKERN_EXT_LIBS` (os.pathsep-separated paths to shared objects)
loads development builds instead of the packaged one.
"""

from __future__ import annotations

import glob
import logging
import os

import torch

log = logging.getLogger("arkern")

_state: dict[str, object] = {"loaded": None, "reason": None}


def _candidates() -> list[str]:
    dev = os.environ.get("ARKERN_EXT_LIBS")
    if dev:
        return [p for p in dev.split(os.pathsep) if p]
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd")))


def load_extension() -> str | None:
    """Load the compiled kernels once. Returns None on success, else the reason they are missing."""
    if _state["loaded"] is not None:
        return _state["reason"]  # type: ignore[return-value]
    reason = None
    if os.environ.get("ARKERN_USE_CPP", "1") == "0":
        reason = "the C++ extension is disabled (ARKERN_USE_CPP=0)"
    else:
        paths = _candidates()
        if not paths:
            reason = ("the C++ extension arkern._C is not built "
                      "(run `pip install --no-build-isolation -e .` with torch installed)")
        for path in paths:
            try:
                torch.ops.load_library(path)
            except OSError as exc:  # a stale build against another torch, a missing symbol, ...
                reason = f"the C++ extension {os.path.basename(path)} failed to load: {exc}"
                break
    _state["loaded"] = reason is None
    _state["reason"] = reason
    if reason is not None:
        log.warning("arkern: %s; only the 'reference' backend is available on CPU.", reason)
    return reason


def extension_reason() -> str | None:
    """Why the compiled extension is unavailable (None when it is loaded)."""
    return load_extension()
