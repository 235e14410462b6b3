"""Triton kernel for causal_conv1d_varlen_states (forward; autograd through the reference backward).

Semantics: arkern/reference/causal_conv1d_varlen.py. One program copies a (BLOCK_S state slots x BLOCK_D
channels) tile of one sequence's state: slot j reads token ``end - state_len + j`` of x, masked to zero
before the sequence's start. Offsets are computed in int64 (x is often a column slice of a wide projection,
so token * stride overflows int32 early).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from arkern.reference.causal_conv1d_varlen import causal_conv1d_varlen_states_backward


@triton.jit
def _varlen_states(x_ptr, cu_ptr, out_ptr, state_len, dim, sxt, sxd,
                   BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    slot = tl.program_id(1).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    ch = tl.program_id(2).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    start = tl.load(cu_ptr + seq).to(tl.int64)
    end = tl.load(cu_ptr + seq + 1).to(tl.int64)
    token = end - state_len + slot  # the token state slot `slot` holds
    inside = (slot < state_len)[:, None] & (ch < dim)[None, :]
    vals = tl.load(x_ptr + token[:, None] * sxt + ch[None, :] * sxd, mask=inside & (token >= start)[:, None],
                   other=0)
    # out is (batch, state_len, dim) memory: slot-major, channels contiguous
    tl.store(out_ptr + (seq * state_len + slot)[:, None] * dim + ch[None, :], vals, mask=inside)


def _launch(x: torch.Tensor, cu_seqlens: torch.Tensor, state_len: int) -> torch.Tensor:
    batch, dim = cu_seqlens.shape[0] - 1, x.shape[1]
    out = torch.empty_strided((batch, dim, state_len), (state_len * dim, 1, dim), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_s = min(triton.next_power_of_2(state_len), 16)
    block_d = min(triton.next_power_of_2(dim), 256)
    grid = (batch, triton.cdiv(state_len, block_s), triton.cdiv(dim, block_d))
    _varlen_states[grid](x, cu_seqlens.contiguous(), out, state_len, dim, x.stride(0), x.stride(1),
                         BLOCK_S=block_s, BLOCK_D=block_d)
    return out


class _VarlenStates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cu_seqlens, state_len):
        ctx.save_for_backward(cu_seqlens)
        ctx.total_tokens = x.shape[0]
        return _launch(x, cu_seqlens, state_len)

    @staticmethod
    def backward(ctx, grad_states):
        (cu_seqlens,) = ctx.saved_tensors
        return causal_conv1d_varlen_states_backward(grad_states, cu_seqlens, ctx.total_tokens), None, None


def causal_conv1d_varlen_states(x: torch.Tensor, cu_seqlens: torch.Tensor, state_len: int) -> torch.Tensor:
    """x (total_tokens, dim), cu_seqlens (batch + 1,) int32/int64 -> states (batch, dim, state_len) with
    strides (state_len * dim, 1, dim). Inputs are validated by arkern.ops.causal_conv1d_varlen."""
    return _VarlenStates.apply(x, cu_seqlens, state_len)
