"""Drop-in replacement for the `causal_conv1d` package (Dao-AILab): same functions, same semantics.

    from arkern.compat.causal_conv1d import causal_conv1d_fn, causal_conv1d_update, causal_conv1d_varlen_states

Code that imports the package itself runs unchanged after an opt-in ``install()`` (see its docstring).

Differences from the original: any width (not only 2-4), every arkern backend (the C++ CPU kernel
first), float32 / float64 / float16 / bfloat16 inputs (half inputs are computed in float32 and rounded
once at the end, as the original accumulates in float32).

Shapes: x (batch, dim, seqlen) in channel-first or channel-last memory layout; weight (dim, width);
bias (dim,); initial_states / final states (batch, dim, width - 1); seq_idx (batch, seqlen) int32.
"""

from __future__ import annotations

import torch

from arkern.compat.install import install_shim
from arkern.ops import causal_conv1d as _conv
from arkern.ops import causal_conv1d_update as _update
from arkern.ops import causal_conv1d_varlen_states as _varlen_states
from arkern.ops._validate import check_tensor
from arkern.reference.causal_conv1d_varlen import causal_conv1d_varlen_states as causal_conv1d_varlen_states_ref

_ACTIVATIONS = (None, "silu", "swish")
_HALF = (torch.float16, torch.bfloat16)


def _activation(name: str | None) -> str | None:
    if name not in _ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {_ACTIVATIONS}, got {name!r}")
    return None if name is None else "silu"


def _check_weight(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d: weight must have shape (dim, width) = ({x.shape[1]}, width), "
                         f"got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise ValueError(f"causal_conv1d: bias must have shape ({x.shape[1]},), got {tuple(bias.shape)}")


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    if x.dtype in _HALF or weight.dtype in _HALF:
        return torch.float32
    return torch.promote_types(x.dtype, weight.dtype)


def causal_conv1d_fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     seq_idx: torch.Tensor | None = None, initial_states: torch.Tensor | None = None,
                     return_final_states: bool = False, final_states_out: torch.Tensor | None = None,
                     activation: str | None = None):
    """Depthwise causal conv over time: y[b, d, t] = act(bias[d] + sum_k weight[d, k] x[b, d, t - (W-1-k)]).

    Args:
        x: (batch, dim, seqlen), channel-first or channel-last memory layout.
        weight: (dim, width); bias: (dim,) or None.
        seq_idx: (batch, seqlen) int32 for packed variable-length sequences: taps never cross a change of
            seq_idx, and positions with seq_idx < 0 are padding (output 0). Not combinable with
            initial_states.
        initial_states: (batch, dim, width - 1) inputs before time 0, or None for zeros.
        return_final_states: also return the last width - 1 inputs (batch, dim, width - 1);
            `final_states_out` (same shape) receives them in place if given.
        activation: None, "silu" or "swish".

    Returns:
        y (batch, dim, seqlen) in x's dtype, or (y, final_states).
    """
    act = _activation(activation)
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"causal_conv1d_fn: x must be (batch, dim, seqlen), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    check_tensor("causal_conv1d_fn", "x", x, ndim=3)  # a float dtype: an integer x would be truncated
    _check_weight(x, weight, bias)
    if final_states_out is not None:
        check_tensor("causal_conv1d_fn", "final_states_out", final_states_out, ndim=3)
    if seq_idx is not None and initial_states is not None:
        raise ValueError("causal_conv1d_fn: initial_states cannot be used together with seq_idx")
    dtype = _compute_dtype(x, weight)
    xc, wc = x.to(dtype), weight.to(dtype).unsqueeze(1)
    bc = bias.to(dtype) if bias is not None else None
    init = initial_states.to(dtype) if initial_states is not None else None
    dim = x.shape[1]
    if seq_idx is None:
        y, final = _conv(xc, wc, bc, groups=dim, activation=act, initial_state=init, return_final_state=True)
    else:
        y = _varlen(xc, wc, bc, seq_idx, act)
        final = _conv(xc, wc, bc, groups=dim, return_final_state=True)[1] if return_final_states else None
    y = y.to(x.dtype)
    if not return_final_states:
        return y
    final = final.to(x.dtype)
    if final_states_out is not None:
        if tuple(final_states_out.shape) != tuple(final.shape):
            raise ValueError(f"causal_conv1d_fn: final_states_out must have shape {tuple(final.shape)}, "
                             f"got {tuple(final_states_out.shape)}")
        final_states_out.copy_(final)
        final = final_states_out
    return y, final


def _varlen(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, seq_idx: torch.Tensor,
            act: str | None) -> torch.Tensor:
    """Packed sequences: every run of equal seq_idx in a row is convolved on its own (zero history).

    The runs are gathered into a padded batch (one row per run), convolved with the same op, and
    scattered back, so the kernels and their autograd are reused unchanged.
    """
    batch, dim, seqlen = x.shape
    if seq_idx.shape != (batch, seqlen) or seq_idx.dtype != torch.int32:
        raise ValueError(f"causal_conv1d_fn: seq_idx must be int32 of shape {(batch, seqlen)}, "
                         f"got {seq_idx.dtype} {tuple(seq_idx.shape)}")
    idx = seq_idx.to("cpu")
    starts = torch.ones(batch, seqlen, dtype=torch.bool)
    starts[:, 1:] = idx[:, 1:] != idx[:, :-1]
    runs = []  # (row, start, length) of every non-padding run
    for row in range(batch):
        pos = torch.nonzero(starts[row]).flatten().tolist() + [seqlen]
        runs += [(row, s, e - s) for s, e in zip(pos[:-1], pos[1:]) if idx[row, s] >= 0]
    y = x.new_zeros(batch, w.shape[0], seqlen)
    if not runs:
        return y
    longest = max(n for _, _, n in runs)
    packed = x.new_zeros(len(runs), dim, longest)
    rows = torch.tensor([r for r, _, _ in runs], device=x.device)
    time = torch.tensor([s for _, s, _ in runs]).unsqueeze(1) + torch.arange(longest).unsqueeze(0)
    valid = torch.arange(longest).unsqueeze(0) < torch.tensor([n for _, _, n in runs]).unsqueeze(1)
    time = time.clamp(max=seqlen - 1).to(x.device)
    valid = valid.to(x.device)
    gathered = x[rows[:, None], :, time].permute(0, 2, 1)  # (runs, dim, longest)
    packed = torch.where(valid[:, None, :], gathered, packed)
    out = _conv(packed, w, b, groups=dim, activation=act)
    flat_rows = rows[:, None].expand_as(time)[valid]
    flat_time = time[valid]
    return _scatter(y, out, flat_rows, flat_time, valid)


def _scatter(y: torch.Tensor, out: torch.Tensor, rows: torch.Tensor, time: torch.Tensor,
             valid: torch.Tensor) -> torch.Tensor:
    values = out.permute(0, 2, 1)[valid]  # (n_valid, dim)
    y = y.permute(0, 2, 1).index_put((rows, time), values)  # (batch, seqlen, dim)
    return y.permute(0, 2, 1)


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, activation: str | None = None,
                         cache_seqlens: torch.Tensor | None = None,
                         conv_state_indices: torch.Tensor | None = None) -> torch.Tensor:
    """One or a few decode steps, conv_state updated in place.

    Args:
        x: (batch, dim) or (batch, dim, seqlen) new inputs.
        conv_state: (batch or pool, dim, state_len), state_len >= width - 1.
        weight: (dim, width); bias: (dim,) or None; activation: None, "silu" or "swish".
        cache_seqlens: (batch,) int32: conv_state is a circular buffer written at cache_seqlens % state_len.
        conv_state_indices: (batch,) int32 rows of conv_state to use; negative = padding row (output 0,
            state untouched).

    Returns:
        (batch, dim) or (batch, dim, seqlen), x's dtype.
    """
    act = _activation(activation)
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        raise ValueError("causal_conv1d_update: x must be (batch, dim) or (batch, dim, seqlen)")
    check_tensor("causal_conv1d_update", "x", x, ndim=(2, 3))
    _check_weight(x, weight, bias)
    # half-precision states are updated in a float32 copy and written back (accumulation in float32)
    state = conv_state.float() if conv_state.dtype in _HALF else conv_state
    dtype = state.dtype
    y = _update(x.to(dtype), state, weight.to(dtype).unsqueeze(1), bias.to(dtype) if bias is not None else None,
                groups=x.shape[1], activation=act, cache_seqlens=cache_seqlens,
                conv_state_indices=conv_state_indices)
    if state is not conv_state:
        conv_state.copy_(state)
    return y.to(x.dtype)


def causal_conv1d_varlen_states(x: torch.Tensor, cu_seqlens: torch.Tensor, state_len: int) -> torch.Tensor:
    """The conv states of every sequence of a packed varlen batch (to prefill decode caches).

    Args:
        x: (total_tokens, dim), any strides; float32, float64, float16 or bfloat16.
        cu_seqlens: (batch + 1,) int32 or int64 cumulative sequence lengths starting from 0 (non-decreasing,
            last value total_tokens); sequence i is ``x[cu_seqlens[i]:cu_seqlens[i + 1]]``.
        state_len: tokens kept per sequence (>= 1): the last ``state_len`` tokens, zero-padded on the left.

    Returns:
        (batch, dim, state_len) in x's dtype, laid out channel-last (strides (state_len * dim, 1, dim)).
    """
    return _varlen_states(x, cu_seqlens, state_len)


# what `import causal_conv1d` and its submodules provide after install()
_SHIM_MODULES = {
    "causal_conv1d": {"__version__": "1.6.0+arkern", "causal_conv1d_fn": causal_conv1d_fn,
                      "causal_conv1d_update": causal_conv1d_update},
    "causal_conv1d.causal_conv1d_interface": {"causal_conv1d_fn": causal_conv1d_fn,
                                              "causal_conv1d_update": causal_conv1d_update},
    "causal_conv1d.causal_conv1d_varlen": {"causal_conv1d_varlen_states": causal_conv1d_varlen_states,
                                           "causal_conv1d_varlen_states_ref": causal_conv1d_varlen_states_ref},
}


def install() -> str:
    """Opt in: make ``import causal_conv1d`` resolve to these functions when the real package is not installed.

    Afterwards ``from causal_conv1d import causal_conv1d_fn, causal_conv1d_update``,
    ``causal_conv1d.causal_conv1d_interface`` and ``from causal_conv1d.causal_conv1d_varlen import
    causal_conv1d_varlen_states`` work unchanged. An installed causal-conv1d is never shadowed (Python's own
    import path is always searched first). The shim modules have ``__arkern_shim__ = True`` and a
    ``__version__`` of ``1.6.0+arkern``.

    Returns:
        "arkern" if ``import causal_conv1d`` now gives arkern, "causal_conv1d" if the installed package stays in
        charge. The same is logged (INFO) on the "arkern" logger.
    """
    return install_shim("causal_conv1d", _SHIM_MODULES)
