"""Benchmark cases for Mamba-style decode-cache handling: causal_conv1d_varlen_states (prefill of the caches of a
packed varlen batch) and the one-token causal_conv1d_update step.

Baseline of every case ("pytorch"): the pure-PyTorch formula the way causal-conv1d's reference functions
compute it: for the states, a Python loop over sequences copying each one's last tokens into a zeroed
channel-last tensor; for the update, concatenate the state and the new token, keep the last state_len
columns as the new state, and run F.conv1d over the window. Other providers: "gather" (the states as one
vectorised index_select), "reference" (arkern's reference backend), "cpu" (arkern's C++ kernel) and, for
the update, "compat" (the drop-in arkern.compat.causal_conv1d.causal_conv1d_update).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arkern.bench.harness import Case
from arkern.compat.causal_conv1d import causal_conv1d_update as compat_update
from arkern.ops import causal_conv1d_update, causal_conv1d_varlen_states
from arkern.reference.causal_conv1d_varlen import varlen_state_sources


def pytorch_varlen_states(x: torch.Tensor, cu_seqlens: torch.Tensor, state_len: int) -> torch.Tensor:
    """Baseline: per-sequence copy, indices kept as tensors (x (total, dim) -> (batch, dim, state_len))."""
    batch, dim = cu_seqlens.shape[0] - 1, x.shape[1]
    states = torch.zeros(batch, state_len, dim, dtype=x.dtype, device=x.device).transpose(1, 2)
    for i in range(batch):
        end = cu_seqlens[i + 1]
        start = torch.maximum(cu_seqlens[i], end - state_len)
        if end > start:
            states[i, :, state_len - (end - start):] = x[start:end].T
    return states


def gather_varlen_states(x: torch.Tensor, cu_seqlens: torch.Tensor, state_len: int) -> torch.Tensor:
    """Vectorised pure PyTorch: one index_select of the kept token rows, zero slots masked out (x non-empty)."""
    src = varlen_state_sources(cu_seqlens, state_len)  # (batch, state_len), -1 = zero slot
    rows = x.index_select(0, src.clamp(min=0).flatten()).view(*src.shape, x.shape[1])
    return rows.masked_fill_((src < 0).unsqueeze(-1), 0).transpose(1, 2)


def pytorch_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   silu: bool) -> torch.Tensor:
    """Baseline decode step: x (B, dim), conv_state (B, dim, state_len) updated in place, weight (dim, width)."""
    dim, state_len = weight.shape[0], conv_state.shape[-1]
    window = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1)  # (B, dim, state_len + 1)
    conv_state.copy_(window[:, :, -state_len:])
    y = F.conv1d(window, weight.unsqueeze(1), bias, groups=dim)[:, :, -1]
    return F.silu(y) if silu else y


def _varlen(n_seqs: int, max_len: int, dim: int, state_len: int, dtype: torch.dtype) -> Case:
    dt = str(dtype).replace("torch.", "")

    def setup():
        g = torch.Generator().manual_seed(0)
        seqlens = torch.randint(1, max_len + 1, (n_seqs,), generator=g)
        cu = F.pad(seqlens.cumsum(0), (1, 0))
        wide = torch.randn(int(seqlens.sum()), 2 * dim + 64, generator=g).to(dtype)
        x = wide[:, dim:2 * dim]  # xBC: a column slice of the in_proj output, as Mamba passes it
        fns = {"pytorch": lambda: pytorch_varlen_states(x, cu, state_len),
               "gather": lambda: gather_varlen_states(x, cu, state_len)}
        fns.update({p: (lambda p=p: causal_conv1d_varlen_states(x, cu, state_len, backend=p))
                    for p in ("reference", "cpu")})
        return fns

    return Case("causal_conv1d_varlen", f"varlen_states {n_seqs} seqs <= {max_len} dim={dim} S={state_len} {dt}",
                setup, baseline="pytorch", params={"dtype": dt, "batch": n_seqs})


def _update(batch: int, dim: int, width: int, dtype: torch.dtype) -> Case:
    dt = str(dtype).replace("torch.", "")

    def setup():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, dim, generator=g).to(dtype)
        w = torch.randn(dim, width, generator=g) / width ** 0.5
        b = torch.randn(dim, generator=g)
        states = {p: torch.randn(batch, dim, width, generator=g).to(dtype)  # Mamba keeps d_conv inputs
                  for p in ("pytorch", "reference", "cpu", "compat")}
        wt, bt = w.to(dtype), b.to(dtype)
        fns = {"pytorch": lambda: pytorch_update(x, states["pytorch"], wt, bt, True),
               "compat": lambda: compat_update(x, states["compat"], w, b, "silu")}
        if dtype in (torch.float32, torch.float64):  # the arkern op computes in the input dtype
            fns.update({p: (lambda p=p: causal_conv1d_update(x, states[p], wt.unsqueeze(1), bt, 1, dim, "silu",
                                                             backend=p)) for p in ("reference", "cpu")})
        return fns

    return Case("causal_conv1d_varlen", f"update B={batch} dim={dim} W={width} silu {dt}", setup,
                baseline="pytorch", items=batch, params={"dtype": dt, "batch": batch})


def cases(quick: bool = False) -> list[Case]:
    """Standard configurations (the quick set is a subset)."""
    out = [_varlen(8, 1024, 4096, 4, torch.float32), _update(16, 4096, 4, torch.float32)]
    if not quick:
        out += [_varlen(100, 31, 4096, 20, torch.bfloat16)]  # causal-conv1d's own get-states test shape
        out += [_update(64, 5376, 4, torch.float32), _update(16, 4096, 4, torch.bfloat16)]
    return out
