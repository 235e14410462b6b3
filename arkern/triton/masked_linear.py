"""Triton kernels for masked_linear: one tiled matmul C = A @ (B * M) with optional masks and bias.

Transposes are expressed through strides, so forward (x @ (W*M)^T), grad_x (g @ (W*M)) and grad_W
((g^T @ x) * M) are the same kernel; masked weights are replaced by zeros as tiles are loaded.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _masked_matmul(a_ptr, b_ptr, mb_ptr, mc_ptr, bias_ptr, c_ptr, M, N, K,
                   sam, sak, sbk, sbn, smbk, smbn, smcm, smcn, scm, scn,
                   MASK_B: tl.constexpr, MASK_C: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32 if c_ptr.dtype.element_ty != tl.float64 else tl.float64)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        a_ok = (rm[:, None] < M) & (rk[None, :] < K)
        b_ok = (rk[:, None] < K) & (rn[None, :] < N)
        a = tl.load(a_ptr + rm[:, None] * sam + rk[None, :] * sak, mask=a_ok, other=0.0)
        b = tl.load(b_ptr + rk[:, None] * sbk + rn[None, :] * sbn, mask=b_ok, other=0.0)
        if MASK_B:
            keep = tl.load(mb_ptr + rk[:, None] * smbk + rn[None, :] * smbn, mask=b_ok, other=0)
            b = tl.where(keep != 0, b, 0.0)
        acc += tl.dot(a, b, input_precision="ieee")
    c_ok = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    if MASK_C:
        keep_c = tl.load(mc_ptr + rm[:, None] * smcm + rn[None, :] * smcn, mask=c_ok, other=0)
        acc = tl.where(keep_c != 0, acc, 0.0)
    tl.store(c_ptr + rm[:, None] * scm + rn[None, :] * scn, acc.to(c_ptr.dtype.element_ty), mask=c_ok)


def _mm(a: torch.Tensor, b: torch.Tensor, *, mask_b: torch.Tensor | None = None,
        mask_c: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """C (M, N) = A (M, K) @ (B (K, N) * mask_b) + bias, then * mask_c. Masks are uint8/bool views."""
    m, k = a.shape
    n = b.shape[1]
    c = torch.empty((m, n), dtype=a.dtype, device=a.device)
    mb = mask_b.view(torch.uint8) if mask_b is not None else c
    mc = mask_c.view(torch.uint8) if mask_c is not None else c
    bm, bn, bk = 32, 32, 32
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _masked_matmul[grid](
        a, b, mb, mc, bias if bias is not None else c, c, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        mb.stride(0) if mask_b is not None else 0, mb.stride(1) if mask_b is not None else 0,
        mc.stride(0) if mask_c is not None else 0, mc.stride(1) if mask_c is not None else 0,
        c.stride(0), c.stride(1),
        MASK_B=mask_b is not None, MASK_C=mask_c is not None, HAS_BIAS=bias is not None,
        BM=bm, BN=bn, BK=bk)
    return c


class _MaskedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mask):
        ctx.save_for_backward(x, weight, mask)
        ctx.has_bias = bias is not None
        return _mm(x, weight.t(), mask_b=mask.t(), bias=bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mask = ctx.saved_tensors
        grad = grad.contiguous()
        gx = _mm(grad, weight, mask_b=mask) if ctx.needs_input_grad[0] else None
        gw = _mm(grad.t(), x, mask_c=mask) if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  mask: torch.Tensor) -> torch.Tensor:
    """x (N, in), weight (out, in), bias (out,) or None, mask (out, in) bool -> (N, out); differentiable."""
    return _MaskedLinear.apply(x, weight, bias, mask)
