"""A small program that uses causal-conv1d the way Mamba-style models do, run unchanged on arkern's shim.

Run by tests/applications/test_compat_causal_conv1d_install.py in a subprocess (so that `causal_conv1d` in sys.modules
never leaks into other tests): ``python -m tests.applications.causal_conv1d_mamba_program DTYPE ...``.

Prefill: a packed batch of sequences of different lengths goes through causal_conv1d_fn with seq_idx, and
causal_conv1d_varlen_states fills each sequence's decode cache. Decode: token by token with
causal_conv1d_update. Check: every output equals a full causal_conv1d_fn over the whole sequence, and each
final cache equals the last `d_conv` inputs of its sequence.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from arkern.compat.causal_conv1d import install
from arkern.testing import assert_close

PROVIDER = install()

from causal_conv1d import causal_conv1d_fn, causal_conv1d_update  # noqa: E402  (after install, on purpose)
from causal_conv1d.causal_conv1d_varlen import causal_conv1d_varlen_states  # noqa: E402


def prefill(xBC: torch.Tensor, cu_seqlens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            conv_state: torch.Tensor) -> torch.Tensor:
    """xBC (1, total_tokens, dim) packed -> conv outputs (1, total_tokens, dim); conv_state filled in place."""
    seqlens = cu_seqlens[1:] - cu_seqlens[:-1]
    seq_idx = torch.repeat_interleave(torch.arange(len(seqlens), dtype=torch.int32), seqlens).unsqueeze(0)
    y = causal_conv1d_fn(xBC.transpose(1, 2), weight, bias, seq_idx=seq_idx, activation="silu")
    conv_state.copy_(causal_conv1d_varlen_states(xBC.squeeze(0), cu_seqlens, state_len=conv_state.shape[-1]))
    return y.transpose(1, 2)


def decode_one_token(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     conv_state: torch.Tensor) -> torch.Tensor:
    """x (batch, dim), one new token per sequence -> (batch, dim); conv_state updated in place."""
    return causal_conv1d_update(x, conv_state, weight, bias, activation="silu")


def main(dtype: torch.dtype) -> float:
    torch.manual_seed(0)
    dim, d_conv, new_tokens = 40, 4, 5
    seqlens = [5, 1, 9, 4, 3, 4]  # longer than, shorter than and equal to d_conv
    batch, total = len(seqlens), sum(seqlens)
    weight = torch.randn(dim, d_conv) / d_conv ** 0.5
    bias = torch.randn(dim)
    zxbcdt = torch.randn(1, total, 3 * dim).to(dtype)  # in_proj output; xBC is a column slice of it
    xBC = zxbcdt[:, :, dim:2 * dim]
    cu_seqlens = F.pad(torch.tensor(seqlens).cumsum(0), (1, 0)).to(torch.int32)
    conv_state = torch.zeros(batch, dim, d_conv, dtype=dtype)  # Mamba keeps d_conv (>= d_conv - 1) inputs

    y_prefill = prefill(xBC, cu_seqlens, weight, bias, conv_state)
    new = torch.randn(new_tokens, batch, dim).to(dtype)
    y_decode = torch.stack([decode_one_token(new[t], weight, bias, conv_state) for t in range(new_tokens)], 1)

    worst = 0.0
    for i, (start, n) in enumerate(zip(cu_seqlens[:-1].tolist(), seqlens)):
        seq = torch.cat([xBC[0, start:start + n], new[:, i]])  # (n + new_tokens, dim): the whole sequence
        y_full = causal_conv1d_fn(seq.T.unsqueeze(0), weight, bias, activation="silu")[0].T
        got = torch.cat([y_prefill[0, start:start + n], y_decode[i]])
        assert_close(got, y_full, name=f"sequence {i} (prefill {n} + decode {new_tokens})", dtype=dtype)
        assert torch.equal(conv_state[i], F.pad(seq.T, (d_conv - seq.shape[0], 0))), f"cache of sequence {i}"
        worst = max(worst, (got.double() - y_full.double()).abs().max().item())
    return worst


if __name__ == "__main__":
    for name in sys.argv[1:] or ["float32"]:
        err = main(getattr(torch, name))
        print(f"provider={PROVIDER} dtype={name} max_abs_err={err:.3g} OK")
