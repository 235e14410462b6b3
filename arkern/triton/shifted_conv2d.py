"""Triton kernels for shifted_conv2d and shifted_conv_transpose2d (PixelCNN++), forward and backward.

Semantics: arkern/reference/shifted_conv2d.py. Both ops are built from three gather kernels, so every
output element is written by exactly one program (no atomics):

    conv      out[n,o,i,j] = sum_{c,ky,kx} inp[n,c, i*s+ky-pt, j*s+kx-pl] * W(o,c,ky,kx)
    gather_t  out[n,o,Y,X] = sum_{c,ky,kx} inp[n,c, (Y+pt-ky)/s, (X+pl-kx)/s] * W(o,c,ky,kx)
              (only where both divisions are exact)
    wgrad     out[p,q,ky,kx] = sum_{n,i,j} A[n,p,i,j] * B[n,q, i*s+ky-pt, j*s+kx-pl]

The shifted conv is `conv` with pads (pt, pl) = (kH-1, (kW-1)//2 or kW-1); its input gradient is
`gather_t` and its weight gradient `wgrad`. The cropped transposed conv is `gather_t` with (pt, pl) =
(0, crop-left); its input gradient is `conv` and its weight gradient `wgrad` with A and B swapped.
Out-of-image taps are masked loads: nothing is read out of bounds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_P = 64


@triton.jit
def _conv(inp_ptr, w_ptr, b_ptr, out_ptr, C, Co, H, W, Ho, Wo, KH, KW, s, pt, pl,
          sin, sic, sih, siw, swo, swc, swh, sww,
          HAS_BIAS: tl.constexpr, TRANSPOSED: tl.constexpr, BLOCK: tl.constexpr):
    no = tl.program_id(0)
    n = no // Co
    o = no % Co
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = p < Ho * Wo
    i = p // Wo
    j = p % Wo
    acc = tl.zeros((BLOCK,), dtype=tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + o)
    for ky in range(0, KH):
        for kx in range(0, KW):
            if TRANSPOSED:
                ny = i + pt - ky
                nx = j + pl - kx
                iy = ny // s
                ix = nx // s
                ok = valid & (ny >= 0) & (nx >= 0) & (ny % s == 0) & (nx % s == 0) & (iy < H) & (ix < W)
            else:
                iy = i * s + ky - pt
                ix = j * s + kx - pl
                ok = valid & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            for c in range(0, C):
                wv = tl.load(w_ptr + o * swo + c * swc + ky * swh + kx * sww)
                acc += wv * tl.load(inp_ptr + n * sin + c * sic + iy * sih + ix * siw, mask=ok, other=0.0)
    tl.store(out_ptr + (n * Co + o) * Ho * Wo + p, acc.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _wgrad(a_ptr, b_ptr, out_ptr, N, P, Q, Ha, Wa, Hb, Wb, KH, KW, s, pt, pl,
           san, sap, sah, saw, sbn, sbq, sbh, sbw, sop, soq, soh, sow, BLOCK: tl.constexpr):
    e = tl.program_id(0)  # (p, q, ky, kx) in contiguous order
    kx = e % KW
    ky = (e // KW) % KH
    q = (e // (KW * KH)) % Q
    p = e // (KW * KH * Q)
    acc = tl.zeros((BLOCK,), dtype=tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32)
    for n in range(0, N):
        for r0 in range(0, Ha * Wa, BLOCK):
            r = r0 + tl.arange(0, BLOCK)
            valid = r < Ha * Wa
            i = r // Wa
            j = r % Wa
            by = i * s + ky - pt
            bx = j * s + kx - pl
            ok = valid & (by >= 0) & (by < Hb) & (bx >= 0) & (bx < Wb)
            av = tl.load(a_ptr + n * san + p * sap + i * sah + j * saw, mask=valid, other=0.0)
            acc += av * tl.load(b_ptr + n * sbn + q * sbq + by * sbh + bx * sbw, mask=ok, other=0.0)
    tl.store(out_ptr + p * sop + q * soq + ky * soh + kx * sow, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty))


def _run_conv(inp, w_view, bias, out_hw, s, pt, pl, transposed):
    """w_view: (Co, C, KH, KW) view (any strides) of the weight as the kernel reads it."""
    N, C, H, W = inp.shape
    Co, _, KH, KW = w_view.shape
    Ho, Wo = out_hw
    out = torch.empty((N, Co, Ho, Wo), dtype=inp.dtype, device=inp.device)
    if out.numel():
        _conv[(N * Co, triton.cdiv(Ho * Wo, BLOCK_P))](
            inp, w_view, bias if bias is not None else w_view, out, C, Co, H, W, Ho, Wo, KH, KW, s, pt, pl,
            *inp.stride(), *w_view.stride(), HAS_BIAS=bias is not None, TRANSPOSED=transposed, BLOCK=BLOCK_P)
    return out


def _run_wgrad(a, b, out, s, pt, pl):
    """out[p, q, ky, kx] (a view with any strides) = sum A[n,p,i,j] * B[n,q,i*s+ky-pt, j*s+kx-pl]."""
    N, P, Ha, Wa = a.shape
    _, Q, Hb, Wb = b.shape
    _, _, KH, KW = out.shape
    if out.numel():
        _wgrad[(out.numel(),)](a, b, out, N, P, Q, Ha, Wa, Hb, Wb, KH, KW, s, pt, pl,
                               *a.stride(), *b.stride(), *out.stride(), BLOCK=BLOCK_P)
    return out


def _pads(shift, kh, kw):
    return kh - 1, ((kw - 1) // 2 if shift == "down" else kw - 1)


class _ShiftedConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, shift, stride):
        ctx.save_for_backward(x, weight)
        ctx.conf = (shift, stride, bias is not None)
        H, W = x.shape[2:]
        pt, pl = _pads(shift, *weight.shape[2:])
        return _run_conv(x, weight, bias, (-(-H // stride), -(-W // stride)), stride, pt, pl, False)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        shift, s, has_bias = ctx.conf
        pt, pl = _pads(shift, *weight.shape[2:])
        g = g.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _run_conv(g, weight.transpose(0, 1), None, x.shape[2:], s, pt, pl, True)
        if ctx.needs_input_grad[1]:
            gw = _run_wgrad(g, x, torch.empty_like(weight, memory_format=torch.contiguous_format), s, pt, pl)
        if has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None


class _ShiftedConvTranspose2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, shift, stride):
        ctx.save_for_backward(x, weight)
        ctx.conf = (shift, stride, bias is not None)
        H, W = x.shape[2:]
        crop_left = (weight.shape[3] - 1) // 2 if shift == "down" else 0
        # weight is (Cin, Cout, kH, kW): the kernel reads W(o, c) = weight[c, o]
        return _run_conv(x, weight.transpose(0, 1), bias, (H * stride, W * stride), stride, 0, crop_left, True)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        shift, s, has_bias = ctx.conf
        crop_left = (weight.shape[3] - 1) // 2 if shift == "down" else 0
        g = g.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _run_conv(g, weight, None, x.shape[2:], s, 0, crop_left, False)
        if ctx.needs_input_grad[1]:
            gw = _run_wgrad(x, g, torch.empty_like(weight, memory_format=torch.contiguous_format), s, 0, crop_left)
        if has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None


def shifted_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shift: str,
                   stride: int = 1) -> torch.Tensor:
    """x (N, Cin, H, W), weight (Cout, Cin, kH, kW) -> (N, Cout, ceil(H/stride), ceil(W/stride))."""
    return _ShiftedConv2d.apply(x, weight, bias, shift, stride)


def shifted_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shift: str,
                             stride: int = 2) -> torch.Tensor:
    """x (N, Cin, H, W), weight (Cin, Cout, kH, kW) -> (N, Cout, H*stride, W*stride)."""
    return _ShiftedConvTranspose2d.apply(x, weight, bias, shift, stride)
