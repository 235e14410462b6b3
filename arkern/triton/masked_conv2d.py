"""Triton kernels for masked_conv2d (forward and backward), visiting only the taps the mask keeps.

Semantics: arkern/reference/masked_conv2d.py. Kept taps: every tap of the rows above the centre row,
the taps left of the centre in the centre row, and at the centre tap the input channel groups the colour
rule allows (gi < go for 'A', gi <= go for 'B'), which form a prefix of the input channels. One program
computes a block of pixels of one (image, output channel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_P = 64


@triton.jit
def _centre_channels(o, Cin, Cout, G, MASK_B: tl.constexpr):
    # input channels [0, end) feed output channel o at the centre tap
    go = o // (Cout // G)
    return (go + MASK_B) * (Cin // G)


@triton.jit
def _fwd(x_ptr, w_ptr, b_ptr, y_ptr, Cin, Cout, H, W, KH, KW, dil, G,
         sxn, sxc, sxh, sxw, swo, swc, swh, sww,
         HAS_BIAS: tl.constexpr, MASK_B: tl.constexpr, BLOCK: tl.constexpr):
    no = tl.program_id(0)
    n = no // Cout
    o = no % Cout
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = p < H * W
    i = p // W
    j = p % W
    rh = KH // 2
    rw = KW // 2
    acc = tl.zeros((BLOCK,), dtype=tl.float64 if y_ptr.dtype.element_ty == tl.float64 else tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + o)
    for ky in range(0, rh + 1):
        iy = i + (ky - rh) * dil
        kx_end = tl.where(ky < rh, KW, rw)
        for kx in range(0, kx_end):
            ix = j + (kx - rw) * dil
            ok = valid & (iy >= 0) & (ix >= 0) & (ix < W)
            for c in range(0, Cin):
                wv = tl.load(w_ptr + o * swo + c * swc + ky * swh + kx * sww)
                acc += wv * tl.load(x_ptr + n * sxn + c * sxc + iy * sxh + ix * sxw, mask=ok, other=0.0)
    for c in range(0, _centre_channels(o, Cin, Cout, G, MASK_B)):
        wv = tl.load(w_ptr + o * swo + c * swc + rh * swh + rw * sww)
        acc += wv * tl.load(x_ptr + n * sxn + c * sxc + i * sxh + j * sxw, mask=valid, other=0.0)
    tl.store(y_ptr + (n * Cout + o) * H * W + p, acc.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _grad_x(g_ptr, w_ptr, gx_ptr, Cin, Cout, H, W, KH, KW, dil, G, swo, swc, swh, sww,
            MASK_B: tl.constexpr, BLOCK: tl.constexpr):
    # gx[n, c, i, j] = sum over kept taps (o, ky, kx) of g[n, o, i - dy, j - dx] * w[o, c, ky, kx]
    nc = tl.program_id(0)
    n = nc // Cin
    c = nc % Cin
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = p < H * W
    i = p // W
    j = p % W
    rh = KH // 2
    rw = KW // 2
    acc = tl.zeros((BLOCK,), dtype=tl.float64 if gx_ptr.dtype.element_ty == tl.float64 else tl.float32)
    gi = c // (Cin // G)
    for o in range(0, Cout):
        for ky in range(0, rh + 1):
            oy = i - (ky - rh) * dil
            kx_end = tl.where(ky < rh, KW, rw)
            for kx in range(0, kx_end):
                ox = j - (kx - rw) * dil
                ok = valid & (oy < H) & (ox >= 0) & (ox < W)
                wv = tl.load(w_ptr + o * swo + c * swc + ky * swh + kx * sww)
                acc += wv * tl.load(g_ptr + (n * Cout + o) * H * W + oy * W + ox, mask=ok, other=0.0)
        go = o // (Cout // G)
        if (gi < go) | ((gi == go) & MASK_B):
            wv = tl.load(w_ptr + o * swo + c * swc + rh * swh + rw * sww)
            acc += wv * tl.load(g_ptr + (n * Cout + o) * H * W + p, mask=valid, other=0.0)
    tl.store(gx_ptr + (n * Cin + c) * H * W + p, acc.to(gx_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _grad_w(g_ptr, x_ptr, gw_ptr, N, Cin, Cout, H, W, KH, KW, dil, G, sxn, sxc, sxh, sxw,
            MASK_B: tl.constexpr, BLOCK: tl.constexpr):
    # one program per weight element (o, c, ky, kx) (contiguous order); masked taps get exact zeros
    e = tl.program_id(0)
    kx = e % KW
    ky = (e // KW) % KH
    c = (e // (KW * KH)) % Cin
    o = e // (KW * KH * Cin)
    rh = KH // 2
    rw = KW // 2
    go = o // (Cout // G)
    gi = c // (Cin // G)
    kept = (ky < rh) | ((ky == rh) & (kx < rw)) | ((ky == rh) & (kx == rw) & ((gi < go) | ((gi == go) & MASK_B)))
    acc = tl.zeros((BLOCK,), dtype=tl.float64 if gw_ptr.dtype.element_ty == tl.float64 else tl.float32)
    if kept:
        for n in range(0, N):
            for p0 in range(0, H * W, BLOCK):
                p = p0 + tl.arange(0, BLOCK)
                valid = p < H * W
                i = p // W
                j = p % W
                iy = i + (ky - rh) * dil
                ix = j + (kx - rw) * dil
                ok = valid & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
                g = tl.load(g_ptr + (n * Cout + o) * H * W + p, mask=valid, other=0.0)
                acc += g * tl.load(x_ptr + n * sxn + c * sxc + iy * sxh + ix * sxw, mask=ok, other=0.0)
    tl.store(gw_ptr + e, tl.sum(acc, axis=0).to(gw_ptr.dtype.element_ty))


def _forward(x, weight, bias, mask_b, color_groups, dilation):
    N, Cin, H, W = x.shape
    Cout, _, KH, KW = weight.shape
    y = torch.empty((N, Cout, H, W), dtype=x.dtype, device=x.device)
    if y.numel():
        _fwd[(N * Cout, triton.cdiv(H * W, BLOCK_P))](
            x, weight, bias if bias is not None else weight, y, Cin, Cout, H, W, KH, KW, dilation, color_groups,
            *x.stride(), *weight.stride(), HAS_BIAS=bias is not None, MASK_B=mask_b, BLOCK=BLOCK_P)
    return y


class _MaskedConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mask_b, color_groups, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (mask_b, color_groups, dilation, bias is not None)
        return _forward(x, weight, bias, mask_b, color_groups, dilation)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        mask_b, G, dil, has_bias = ctx.conf
        N, Cin, H, W = x.shape
        Cout, _, KH, KW = weight.shape
        g = g.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.empty((N, Cin, H, W), dtype=x.dtype, device=x.device)
            if gx.numel():
                _grad_x[(N * Cin, triton.cdiv(H * W, BLOCK_P))](
                    g, weight, gx, Cin, Cout, H, W, KH, KW, dil, G, *weight.stride(), MASK_B=mask_b, BLOCK=BLOCK_P)
        if ctx.needs_input_grad[1]:
            gw = torch.empty((Cout, Cin, KH, KW), dtype=x.dtype, device=x.device)
            if gw.numel():
                _grad_w[(gw.numel(),)](g, x, gw, N, Cin, Cout, H, W, KH, KW, dil, G, *x.stride(),
                                       MASK_B=mask_b, BLOCK=BLOCK_P)
        if has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None, None


def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask_type: str,
                  color_groups: int = 1, dilation: int = 1) -> torch.Tensor:
    """x (N, Cin, H, W), weight (Cout, Cin, kH, kW) odd -> (N, Cout, H, W); differentiable."""
    return _MaskedConv2d.apply(x, weight, bias, mask_type == "B", color_groups, dilation)
