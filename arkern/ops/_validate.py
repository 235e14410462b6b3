"""Input validation shared by every op: each check names the argument and what was expected.

Every public op validates its inputs with these before any kernel runs, so no kernel ever sees a shape
or dtype it was not written for.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _dt(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def check_tensor(op: str, name: str, t: object, *, ndim: int | Sequence[int] | None = None,
                 dtypes: Sequence[torch.dtype] | None = FLOAT_DTYPES) -> torch.Tensor:
    """Check that `t` is a tensor of the given rank(s) and dtype(s)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in ranks:
            want = " or ".join(str(r) for r in ranks)
            raise ValueError(f"{op}: {name} must have {want} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must have dtype in ({', '.join(_dt(d) for d in dtypes)}), "
                        f"got {_dt(t.dtype)}")
    return t


def check_same(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Check that every tensor in `others` has the dtype and device of `ref`."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} has dtype {_dt(t.dtype)} but {ref_name} has {_dt(ref.dtype)}")


def check_shape(op: str, name: str, t: torch.Tensor, expected: Sequence[int], what: str = "") -> None:
    """Check an exact shape; `what` explains where the expected shape comes from."""
    if tuple(t.shape) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}{extra}, got {tuple(t.shape)}")


def check_int(op: str, name: str, value: object, *, minimum: int | None = None) -> int:
    """Check a Python int (not bool), optionally >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return value


def check_choice(op: str, name: str, value: object, choices: Sequence[object]) -> None:
    """Check that `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{op}: {name} must be one of {tuple(choices)}, got {value!r}")
