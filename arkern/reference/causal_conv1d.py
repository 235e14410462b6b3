"""Reference causal 1-D convolution (WaveNet's dilated conv, Mamba's depthwise conv) and its decode step.

Math (S0 = (K-1) * dilation, the receptive field minus one):

    y[b, o, t] = act(bias[o] + sum_{c in group(o), k} weight[o, c', k] * xin[b, c, t - (K-1-k) * dilation])

where xin at times < 0 is `initial_state[b, c, S0 + time]` (or zero) and xin at times >= 0 is x. Tap k
looks back `lag_k = (K-1-k) * dilation` steps: the last tap (k = K-1) is the current input.

Decode state (`causal_conv1d_update`), `conv_state` (pool, Cin, S) with S >= S0, holds past inputs:

* shift register (no cache_seqlens): slot S-1 is the newest past input, slot S-lag is `lag` steps back.
  A step reads its taps, then shifts left by one and appends the new input (newest last).
* ring buffer (cache_seqlens (B,) int32 = tokens seen so far by each row): the input at absolute time
  tau lives in slot `tau mod S` (Python modulo). Token i of a call is at time `seqlen + i`; its tap with
  lag L >= 1 reads slot `(seqlen + i - L) mod S` (before the token is written), then the token is written
  to slot `(seqlen + i) mod S`. Slots for times < 0 hold whatever the state was initialised with (zeros,
  or an initial state placed at slots `tau mod S`, tau in [-S0, 0)).

`conv_state_indices` (B,) int32 maps batch row b to state row `conv_state_indices[b]`; a negative index
is a padding row: its output is zero and no state row is touched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if activation == "silu" else y


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, dilation: int = 1,
                  groups: int = 1, activation: str | None = None, initial_state: torch.Tensor | None = None,
                  return_final_state: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal conv: left-pad by S0 = (K-1)*dilation (with `initial_state` or zeros), then a VALID conv1d.

    Args:
        x: (B, Cin, T).
        weight: (Cout, Cin // groups, K).
        bias: (Cout,) or None.
        initial_state: (B, Cin, S0) inputs before time 0, or None for zeros.

    Returns:
        y (B, Cout, T); with return_final_state also the last S0 inputs (B, Cin, S0), left-padded with the
        initial state (or zeros) when T < S0.
    """
    s0 = (weight.shape[-1] - 1) * dilation
    if initial_state is None:
        xin = F.pad(x, (s0, 0))  # zeros before time 0
    else:
        xin = torch.cat([initial_state, x], dim=-1)
    y = _activate(F.conv1d(xin, weight, bias, dilation=dilation, groups=groups), activation)
    if not return_final_state:
        return y
    return y, xin[:, :, xin.shape[-1] - s0:].clone()


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, dilation: int = 1, groups: int = 1,
                         activation: str | None = None, cache_seqlens: torch.Tensor | None = None,
                         conv_state_indices: torch.Tensor | None = None) -> torch.Tensor:
    """Decode step(s): roll the state and multiply-sum the taps, one token at a time (Mamba's slow path).

    Args:
        x: (B, Cin) one token, or (B, Cin, t) t tokens in time order.
        conv_state: (pool, Cin, S), S >= (K-1)*dilation; updated in place (see the module docstring).
        weight: (Cout, Cin // groups, K). bias: (Cout,) or None.
        cache_seqlens: (B,) int32 tokens already seen per row (ring-buffer mode), or None (shift register).
        conv_state_indices: (B,) int32 state row per batch row (negative: padding row), or None (row b).

    Returns:
        (B, Cout) for 2-D x, else (B, Cout, t).
    """
    squeeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if squeeze else x
    B, cin, t = x3.shape
    cout, cpg_in, K = weight.shape
    S = conv_state.shape[-1]
    lags = (K - 1 - torch.arange(K, device=x.device)) * dilation  # lag of tap k; tap K-1 is the token itself
    if conv_state_indices is None:
        rows = torch.arange(B, device=x.device)
    else:
        rows = conv_state_indices.long()
    live = rows >= 0
    state = conv_state[rows.clamp(min=0)]  # (B, Cin, S) working copy, written back at the end
    w = weight.reshape(groups, cout // groups, cpg_in, K)
    ys = []
    for i in range(t):
        xi = x3[:, :, i]
        if S == 0:  # K == 1: the only tap is the token itself
            taps = xi.unsqueeze(-1)
        elif cache_seqlens is None:
            past = state[:, :, (S - lags).clamp(max=S - 1)]  # slot S - lag (lag 0 is replaced below)
            taps = torch.where(lags == 0, xi.unsqueeze(-1), past)
            state = torch.roll(state, shifts=-1, dims=-1)  # shift left, newest last
            state[:, :, -1] = xi
        else:
            now = cache_seqlens.long() + i  # absolute time of token i, per row
            slots = (now[:, None] - lags[None, :]) % S  # (B, K)
            past = state.gather(2, slots[:, None, :].expand(B, cin, K))
            taps = torch.where(lags == 0, xi.unsqueeze(-1), past)
            state = state.scatter(2, (now % S)[:, None, None].expand(B, cin, 1), xi.unsqueeze(-1))
        # grouped multiply-sum: y[b, g, o] = sum_{c, k} w[g, o, c, k] * taps[b, g, c, k]
        y = (taps.reshape(B, groups, 1, cpg_in, K) * w).sum(dim=(-1, -2)).reshape(B, cout)
        if bias is not None:
            y = y + bias
        y = _activate(y, activation)
        ys.append(torch.where(live[:, None], y, torch.zeros_like(y)))
    conv_state.index_copy_(0, rows[live], state[live])
    out = torch.stack(ys, dim=-1) if ys else x3.new_zeros((B, cout, 0))  # t = 0 tokens: nothing to do
    return out.squeeze(-1) if squeeze else out
