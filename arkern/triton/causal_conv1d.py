"""Triton kernels for causal_conv1d (forward and backward) and causal_conv1d_update.

Semantics: arkern/reference/causal_conv1d.py. One program computes a block of time steps for one
(batch, output channel); taps at negative times read the initial state. The backward recomputes the
pre-activation (for silu), then computes grad_x / grad_initial_state from the pre-activation gradient
and reduces grad_weight over (batch, time) per weight element.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_T = 64


@triton.jit
def _x_at(x_ptr, init_ptr, b, c, tau, valid, sxb, sxc, sxt, sib, sic, sis, S0, HAS_INIT: tl.constexpr):
    # input at times tau (a vector; may be negative: then the initial state, else zero)
    from_x = tl.load(x_ptr + b * sxb + c * sxc + tau * sxt, mask=valid & (tau >= 0), other=0.0)
    if HAS_INIT:
        from_init = tl.load(init_ptr + b * sib + c * sic + (S0 + tau) * sis,
                            mask=valid & (tau < 0) & (S0 + tau >= 0), other=0.0)
        from_x = tl.where(tau >= 0, from_x, from_init)
    return from_x


@triton.jit
def _fwd(x_ptr, w_ptr, bias_ptr, init_ptr, y_ptr, gy_ptr, out_ptr,
         Cout, T, K, dil, cpg_in, cpg_out, S0,
         sxb, sxc, sxt, swo, swc, swk, sib, sic, sis, syb, syo, syt, sgb, sgo, sgt,
         HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, MODE: tl.constexpr,
         BLOCK: tl.constexpr):
    # MODE 0: y = act(pre). MODE 1: out = dL/dpre from gy (contiguous (B, Cout, T)).
    bo = tl.program_id(0)
    b = bo // Cout
    o = bo % Cout
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = t < T
    c0 = (o // cpg_out) * cpg_in
    acc = tl.zeros((BLOCK,), dtype=tl.float64 if y_ptr.dtype.element_ty == tl.float64 else tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o)
    for ci in range(0, cpg_in):
        for k in range(0, K):
            wv = tl.load(w_ptr + o * swo + ci * swc + k * swk)
            xv = _x_at(x_ptr, init_ptr, b, c0 + ci, t - (K - 1 - k) * dil, valid, sxb, sxc, sxt, sib, sic, sis,
                       S0, HAS_INIT)
            acc += wv * xv
    if MODE == 0:
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc))
        tl.store(y_ptr + b * syb + o * syo + t * syt, acc.to(y_ptr.dtype.element_ty), mask=valid)
    else:
        g = tl.load(gy_ptr + b * sgb + o * sgo + t * sgt, mask=valid, other=0.0)
        if SILU:
            s = 1.0 / (1.0 + tl.exp(-acc))
            g = g * s * (1.0 + acc * (1.0 - s))
        tl.store(out_ptr + (b * Cout + o) * T + t, g.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _grad_input(gp_ptr, w_ptr, out_ptr, Cin, Cout, T, K, dil, cpg_in, cpg_out, n_out, t_offset,
                swo, swc, swk, BLOCK: tl.constexpr):
    # out[b, c, s] = sum_{o in group(c), k} gpre[b, o, s + t_offset + (K-1-k)*dil] * w[o, c', k]
    bc = tl.program_id(0)
    b = bc // Cin
    c = bc % Cin
    s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = s < n_out
    grp = c // cpg_in
    ci = c - grp * cpg_in
    acc = tl.zeros((BLOCK,), dtype=tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32)
    for oo in range(0, cpg_out):
        o = grp * cpg_out + oo
        for k in range(0, K):
            t_out = s + t_offset + (K - 1 - k) * dil
            ok = valid & (t_out >= 0) & (t_out < T)
            g = tl.load(gp_ptr + (b * Cout + o) * T + t_out, mask=ok, other=0.0)
            acc += g * tl.load(w_ptr + o * swo + ci * swc + k * swk)
    tl.store(out_ptr + (b * Cin + c) * n_out + s, acc.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _grad_weight(gp_ptr, x_ptr, init_ptr, gw_ptr, B, Cout, T, K, dil, cpg_in, cpg_out, S0,
                 sxb, sxc, sxt, sib, sic, sis, HAS_INIT: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0)  # weight element (o, ci, k), contiguous order
    k = e % K
    ci = (e // K) % cpg_in
    o = e // (K * cpg_in)
    c = (o // cpg_out) * cpg_in + ci
    lag = (K - 1 - k) * dil
    acc = tl.zeros((BLOCK,), dtype=tl.float64 if gw_ptr.dtype.element_ty == tl.float64 else tl.float32)
    for b in range(0, B):
        for t0 in range(0, T, BLOCK):
            t = t0 + tl.arange(0, BLOCK)
            valid = t < T
            g = tl.load(gp_ptr + (b * Cout + o) * T + t, mask=valid, other=0.0)
            xv = _x_at(x_ptr, init_ptr, b, c, t - lag, valid, sxb, sxc, sxt, sib, sic, sis, S0, HAS_INIT)
            acc += g * xv
    tl.store(gw_ptr + e, tl.sum(acc, axis=0).to(gw_ptr.dtype.element_ty))


def _pre_pass(x, weight, bias, init, dilation, groups, silu, *, gy=None):
    B, Cin, T = x.shape
    Cout, cpg_in, K = weight.shape
    S0 = (K - 1) * dilation
    y = torch.empty((B, Cout, T), dtype=x.dtype, device=x.device)
    out = y if gy is None else torch.empty((B, Cout, T), dtype=x.dtype, device=x.device)
    g = gy if gy is not None else y
    ini = init if init is not None else x
    grid = (B * Cout, triton.cdiv(T, BLOCK_T))
    if T > 0:
        _fwd[grid](x, weight, bias if bias is not None else x, ini, y, g, out,
                   Cout, T, K, dilation, cpg_in, Cout // groups, S0,
                   x.stride(0), x.stride(1), x.stride(2), weight.stride(0), weight.stride(1), weight.stride(2),
                   ini.stride(0), ini.stride(1), ini.stride(2) if ini.dim() == 3 else 0,
                   y.stride(0), y.stride(1), y.stride(2), g.stride(0), g.stride(1), g.stride(2),
                   HAS_BIAS=bias is not None, HAS_INIT=init is not None, SILU=silu, MODE=0 if gy is None else 1,
                   BLOCK=BLOCK_T)
    return out


def _final_state(x, init, S0):
    """The last S0 inputs (B, Cin, S0), left-padded with the initial state (or zeros)."""
    B, Cin, _ = x.shape
    past = init if init is not None else x.new_zeros((B, Cin, S0))
    return torch.cat([past, x], dim=2)[:, :, -S0:].contiguous() if S0 > 0 else x.new_zeros((B, Cin, 0))


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, init, dilation, groups, silu):
        ctx.save_for_backward(x, weight, bias, init)
        ctx.conf = (dilation, groups, silu)
        y = _pre_pass(x, weight, bias, init, dilation, groups, silu)
        S0 = (weight.shape[2] - 1) * dilation
        return y, _final_state(x, init, S0)

    @staticmethod
    def backward(ctx, gy, gfinal):
        x, weight, bias, init = ctx.saved_tensors
        dilation, groups, silu = ctx.conf
        B, Cin, T = x.shape
        Cout, cpg_in, K = weight.shape
        S0 = (K - 1) * dilation
        if gy is None:
            gy = torch.zeros((B, Cout, T), dtype=x.dtype, device=x.device)
        gpre = _pre_pass(x, weight, bias, init, dilation, groups, silu, gy=gy)
        gx = gw = gb = gi = None
        if ctx.needs_input_grad[0] and T > 0:
            gx = torch.empty((B, Cin, T), dtype=x.dtype, device=x.device)
            _grad_input[(B * Cin, triton.cdiv(T, BLOCK_T))](
                gpre, weight, gx, Cin, Cout, T, K, dilation, cpg_in, Cout // groups, T, 0,
                weight.stride(0), weight.stride(1), weight.stride(2), BLOCK=BLOCK_T)
        elif ctx.needs_input_grad[0]:
            gx = torch.zeros_like(x)
        if ctx.needs_input_grad[3] and init is not None:
            gi = torch.zeros((B, Cin, S0), dtype=x.dtype, device=x.device)
            if S0 > 0 and T > 0:
                _grad_input[(B * Cin, triton.cdiv(S0, BLOCK_T))](
                    gpre, weight, gi, Cin, Cout, T, K, dilation, cpg_in, Cout // groups, S0, -S0,
                    weight.stride(0), weight.stride(1), weight.stride(2), BLOCK=BLOCK_T)
        if gfinal is not None and S0 > 0:  # the final state is a copy of the last S0 inputs
            full = torch.cat([x.new_zeros((B, Cin, S0)), x.new_zeros((B, Cin, T))], dim=2)
            full[:, :, -S0:] = gfinal
            if gx is not None:
                gx = gx + full[:, :, S0:]
            if gi is not None:
                gi = gi + full[:, :, :S0]
        if ctx.needs_input_grad[1]:
            gw = torch.empty(weight.shape, dtype=x.dtype, device=x.device)
            ini = init if init is not None else x
            if gw.numel() > 0:
                _grad_weight[(gw.numel(),)](
                    gpre, x, ini, gw, B, Cout, T, K, dilation, cpg_in, Cout // groups, S0,
                    x.stride(0), x.stride(1), x.stride(2), ini.stride(0), ini.stride(1),
                    ini.stride(2) if ini.dim() == 3 else 0, HAS_INIT=init is not None, BLOCK=BLOCK_T)
        if bias is not None and ctx.needs_input_grad[2]:
            gb = gpre.sum(dim=(0, 2))
        return gx, gw, gb, gi, None, None, None


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, dilation: int = 1,
                  groups: int = 1, activation: str | None = None, initial_state: torch.Tensor | None = None,
                  return_final_state: bool = False):
    """x (B, Cin, T), weight (Cout, Cin/groups, K) -> y (B, Cout, T) [, final_state (B, Cin, (K-1)*dilation)]."""
    y, final = _CausalConv1d.apply(x, weight, bias, initial_state, dilation, groups, activation == "silu")
    return (y, final) if return_final_state else y


@triton.jit
def _update_write(x_ptr, st_ptr, rows_ptr, seq_ptr, i, Cin, S, sxb, sxc, sxt, ssb, ssc, sss,
                  RING: tl.constexpr, BLOCK_S: tl.constexpr):
    # program (b, c): write token i of row b into its state row (ring slot, or shift left + append)
    bc = tl.program_id(0)
    b = bc // Cin
    c = bc % Cin
    row = tl.load(rows_ptr + b)
    if row >= 0:
        v = tl.load(x_ptr + b * sxb + c * sxc + i * sxt)
        base = st_ptr + row * ssb + c * ssc
        if RING:
            pos = (tl.load(seq_ptr + b) + i) % S
            tl.store(base + pos * sss, v)
        else:
            s = tl.arange(0, BLOCK_S)
            nxt = tl.load(base + (s + 1) * sss, mask=s + 1 < S, other=0.0)
            nxt = tl.where(s == S - 1, v, nxt)
            tl.store(base + s * sss, nxt, mask=s < S)


@triton.jit
def _update_out(x_ptr, st_ptr, w_ptr, bias_ptr, rows_ptr, seq_ptr, y_ptr, i, Cout, K, dil, cpg_in, cpg_out, S,
                sxb, sxc, sxt, ssb, ssc, sss, swo, swc, swk, syb, syo, syt,
                RING: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_K: tl.constexpr):
    # program (b, o): output of token i, before the token is written into the state. Tap k has lag
    # (K-1-k)*dil: lag 0 is the token itself, lag >= 1 the state (shift register: slot S - lag; ring:
    # slot (seqlen + i - lag) mod S).
    bo = tl.program_id(0)
    b = bo // Cout
    o = bo % Cout
    row = tl.load(rows_ptr + b)
    live = row >= 0
    safe_row = tl.where(live, row, 0)  # a padding row reads row 0 and is zeroed below
    k = tl.arange(0, BLOCK_K)
    kv = k < K
    lag = (K - 1 - k) * dil
    if RING:
        pos = (tl.load(seq_ptr + b) + i - lag) % S
        pos = tl.where(pos < 0, pos + S, pos)
    else:
        pos = S - lag
    from_state = kv & (lag > 0)
    c0 = (o // cpg_out) * cpg_in
    acc = tl.zeros((BLOCK_K,), dtype=tl.float64 if y_ptr.dtype.element_ty == tl.float64 else tl.float32)
    for ci in range(0, cpg_in):
        wv = tl.load(w_ptr + o * swo + ci * swc + k * swk, mask=kv, other=0.0)
        sv = tl.load(st_ptr + safe_row * ssb + (c0 + ci) * ssc + pos * sss, mask=from_state, other=0.0)
        xv = tl.load(x_ptr + b * sxb + (c0 + ci) * sxc + i * sxt)
        acc += wv * tl.where(lag == 0, xv, sv)
    total = tl.sum(acc, axis=0)
    if HAS_BIAS:
        total += tl.load(bias_ptr + o)
    if SILU:
        total = total / (1.0 + tl.exp(-total))
    total = tl.where(live, total, 0.0)
    tl.store(y_ptr + b * syb + o * syo + i * syt, total.to(y_ptr.dtype.element_ty))


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, dilation: int = 1, groups: int = 1,
                         activation: str | None = None, cache_seqlens: torch.Tensor | None = None,
                         conv_state_indices: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, Cin) or (B, Cin, t), conv_state (pool, Cin, S) updated in place -> y (B, Cout[, t])."""
    squeeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if squeeze else x
    B, Cin, t = x3.shape
    Cout, cpg_in, K = weight.shape
    S = conv_state.shape[2]
    rows = (conv_state_indices if conv_state_indices is not None
            else torch.arange(B, dtype=torch.int32, device=x.device)).contiguous()
    ring = cache_seqlens is not None
    seq = cache_seqlens.contiguous() if ring else rows
    y = torch.empty((B, Cout, t), dtype=x.dtype, device=x.device)
    for i in range(t):  # tokens in order: outputs first (they read the older state), then the write
        _update_out[(B * Cout,)](x3, conv_state, weight, bias if bias is not None else weight, rows, seq, y, i,
                                 Cout, K, dilation, cpg_in, Cout // groups, S,
                                 x3.stride(0), x3.stride(1), x3.stride(2),
                                 conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
                                 weight.stride(0), weight.stride(1), weight.stride(2),
                                 y.stride(0), y.stride(1), y.stride(2),
                                 RING=ring, HAS_BIAS=bias is not None, SILU=activation == "silu",
                                 BLOCK_K=triton.next_power_of_2(K))
        if S > 0:
            _update_write[(B * Cin,)](x3, conv_state, rows, seq, i, Cin, S,
                                      x3.stride(0), x3.stride(1), x3.stride(2),
                                      conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
                                      RING=ring, BLOCK_S=triton.next_power_of_2(S))
    return y.squeeze(-1) if squeeze else y
