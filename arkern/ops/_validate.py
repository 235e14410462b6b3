"""Input validation shared by every op: each check names the argument and what was expected.

Every public op validates its inputs with these before any kernel runs, so no kernel ever sees a shape
or dtype it was not written for.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
MAX_STATE_BYTES = 1 << 48  # an output state this large (256 TiB) cannot be allocated anywhere: a typo


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


def check_writable(op: str, name: str, t: torch.Tensor, **inputs: torch.Tensor | None) -> None:
    """Check a tensor an op writes in place, before anything is written.

    No two of its elements may share one address (an ``expand()``-ed tensor: the writes would land on each
    other), it must not share storage with the tensors the op reads (`inputs`), and, as torch requires of
    every in-place op, it must not be an inference tensor outside inference mode nor a leaf that requires
    grad while grad mode is on (the Triton kernels write raw memory, so torch would not check these).
    """
    if torch.compiler.is_compiling():  # none of this is traceable; the C++ kernels and their autograd re-check
        return
    if torch._debug_has_internal_overlap(t) == 1:  # 1: certainly overlapping (2: too hard to tell, fine)
        raise ValueError(f"{op}: {name} has internal overlap: more than one element of the written-to tensor "
                         f"refers to a single memory location (strides {t.stride()}, e.g. an expand()-ed "
                         f"tensor); clone() it before passing it")
    for other, o in inputs.items():
        if o is not None and o.device == t.device and t.device.type != "meta" and torch._C._overlaps(t, o):
            raise ValueError(f"{op}: {name} shares storage with {other}, which the op reads while writing {name}")
    if t.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"{op}: Inplace update to inference tensor outside InferenceMode is not allowed "
                           f"({name} was created in inference mode; clone() it, or run under inference_mode)")
    if t.requires_grad and t.is_leaf and torch.is_grad_enabled():
        raise RuntimeError(f"{op}: {name} is a leaf Variable that requires grad and is being used in an in-place "
                           f"operation (torch forbids that); pass {name}.detach() or run under torch.no_grad()")


def check_uniforms(op: str, noise: object, device: torch.device, name: str = "noise") -> None:
    """Pre-drawn uniforms: a float64 tensor on `device` with every value in [0, 1) (NaN, inf and values
    outside would make the samplers pick levels differently, or read out of their tables)."""
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(noise).__name__}")
    if noise.dtype != torch.float64:
        raise TypeError(f"{op}: {name} must be float64 uniforms, got {_dt(noise.dtype)}")
    if noise.device != device:
        raise ValueError(f"{op}: {name} is on {noise.device}, expected {device} (where the samples are written)")
    if noise.numel() and not torch.compiler.is_compiling() and not bool(((noise >= 0) & (noise < 1)).all()):
        raise ValueError(f"{op}: {name} must hold uniforms in [0, 1), got values in "
                         f"[{float(noise.min())}, {float(noise.max())}] (or NaN)")


def check_step_conditioning(op: str, t0: object, steps: int, batch: int, layers: int, width: int,
                            cond: torch.Tensor | None, cond_hop: int, gbias: torch.Tensor | None) -> None:
    """The checks every fused WaveNet step op shares: t0 an int >= 0; local conditioning ``cond`` float32
    (batch, frames, layers, width) with frames covering steps t0 .. t0 + steps - 1 at ``cond_hop`` samples
    per frame; global bias ``gbias`` float32 (batch, layers, width). Raises ValueError naming the argument."""
    if isinstance(t0, bool) or not isinstance(t0, int) or t0 < 0:
        raise ValueError(f"{op}: t0 must be an int >= 0, got {t0!r}")
    if cond is not None:
        if (cond.dtype != torch.float32 or cond.dim() != 4 or cond.shape[0] != batch
                or cond.shape[2:] != (layers, width)):
            raise ValueError(f"{op}: cond must be float32 ({batch}, frames, {layers}, {width}), got {cond.dtype} "
                             f"{tuple(cond.shape)}")
        if cond_hop < 1:
            raise ValueError(f"{op}: cond_hop must be >= 1, got {cond_hop}")
        if steps and (t0 + steps - 1) // cond_hop >= cond.shape[1]:
            raise ValueError(f"{op}: cond has {cond.shape[1]} frames, too few for steps up to {t0 + steps} at "
                             f"cond_hop={cond_hop}")
    if gbias is not None and (gbias.dtype != torch.float32 or tuple(gbias.shape) != (batch, layers, width)):
        raise ValueError(f"{op}: gbias must be float32 ({batch}, {layers}, {width}), got {gbias.dtype} "
                         f"{tuple(gbias.shape)}")
