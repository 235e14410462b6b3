"""Reference for causal_conv1d_varlen_states: the decode states of the sequences of a packed varlen batch.

A packed batch is a (total_tokens, dim) tensor holding `batch` sequences back to back; sequence i occupies
rows ``cu_seqlens[i] : cu_seqlens[i + 1]`` (``cu_seqlens`` is the cumulative sum of the lengths, starting
with 0). Its state is the input a causal conv needs to continue that sequence: its last ``state_len``
tokens, oldest first, zero-padded on the left when the sequence is shorter (an empty sequence gives zeros):

    states[i, :, state_len - n + j] = x[end_i - n + j, :]    for j in [0, n), n = min(len_i, state_len)
    states[i, :, :state_len - n]    = 0

With ``state_len >= width - 1`` this is exactly the shift-register ``conv_state`` of
``causal_conv1d_update`` after feeding sequence i (Mamba's prefill of its decode cache).

Layout (as in causal-conv1d): the result has shape (batch, dim, state_len) but is a transposed view of
contiguous (batch, state_len, dim) memory, i.e. channel-last, so each state column is one copied token row.
"""

from __future__ import annotations

import torch


def causal_conv1d_varlen_states(x: torch.Tensor, cu_seqlens: torch.Tensor, state_len: int) -> torch.Tensor:
    """The last `state_len` tokens of every sequence of a packed batch, zero-padded on the left.

    Args:
        x: (total_tokens, dim), any strides.
        cu_seqlens: (batch + 1,) int32/int64, non-decreasing, last value total_tokens.
        state_len: tokens kept per sequence (> 0).

    Returns:
        (batch, dim, state_len) in x's dtype, a transposed view of contiguous (batch, state_len, dim) memory.
    """
    batch, dim = cu_seqlens.shape[0] - 1, x.shape[1]
    states = x.new_zeros(batch, state_len, dim)  # token-major memory, as the kernels write it
    bounds = cu_seqlens.tolist()
    for i in range(batch):
        start, end = bounds[i], bounds[i + 1]
        n = min(end - start, state_len)  # tokens of sequence i that fit; the rest stays zero
        if n > 0:
            states[i, state_len - n:] = x[end - n:end]
    return states.transpose(1, 2)


def varlen_state_sources(cu_seqlens: torch.Tensor, state_len: int) -> torch.Tensor:
    """(batch, state_len) int64: the row of x that state slot j of sequence i copies, or -1 for a zero slot.

    The same selection as :func:`causal_conv1d_varlen_states`, as an index map with no Python loop (used by
    its backward: grad_x[src] = grad_states[i, :, j]).
    """
    cu = cu_seqlens.to(torch.int64)
    start, end = cu[:-1].unsqueeze(1), cu[1:].unsqueeze(1)
    src = end - state_len + torch.arange(state_len, device=cu.device).unsqueeze(0)
    return torch.where(src >= start, src, torch.full_like(src, -1))


def causal_conv1d_varlen_states_backward(grad_states: torch.Tensor, cu_seqlens: torch.Tensor,
                                         total_tokens: int) -> torch.Tensor:
    """Gradient of :func:`causal_conv1d_varlen_states` for x: each copied token gets its slot's gradient.

    Args:
        grad_states: (batch, dim, state_len), any strides.
        cu_seqlens: (batch + 1,) as in the forward.
        total_tokens: rows of x.

    Returns:
        grad_x (total_tokens, dim), zero for tokens that no state kept.
    """
    batch, dim, state_len = grad_states.shape
    src = varlen_state_sources(cu_seqlens, state_len).to(grad_states.device)
    rows = grad_states.transpose(1, 2).reshape(batch * state_len, dim)  # slot (i, j) -> row i*state_len + j
    grad_x = grad_states.new_zeros(total_tokens + 1, dim)  # row 0 collects the zero slots (src = -1)
    return grad_x.index_add_(0, src.flatten() + 1, rows)[1:]
