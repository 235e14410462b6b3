"""Reference of the fused WaveNet sampler (``torch.ops.arkern.wavenet_generate``), in plain PyTorch.

It reads the packed weights of :class:`arkern.ops.wavenet_decode.WaveNetFused` (the layout is defined here:
every matrix W (M x N) has its rows zero-padded to Mp = ceil16(M) and is stored as row tiles of up to
``TILE`` outputs, each tile transposed (N x width) and contiguous) and runs the network one step at a time.
It is the ground truth for the packing and for the C++, Triton and CUDA kernels' arithmetic, and the
baseline of their benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arkern.distributions import sample_categorical

TILE = 64  # outputs per packed row tile


def pad16(n: int) -> int:
    """n rounded up to a multiple of 16 (the kernels' row padding)."""
    return (n + 15) // 16 * 16


def unpack_matrix(packed: torch.Tensor, mp: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_matrix` up to the padding: flat tiles -> (Mp × N) float32."""
    rows, off = [], 0
    for m0 in range(0, mp, TILE):
        width = min(TILE, mp - m0)
        rows.append(packed[off:off + width * n].to(torch.float32).reshape(n, width).t())
        off += width * n
    return torch.cat(rows)


def wavenet_generate(emb, w_dil, b_dil, w_rs, b_rs, w_out, b_out, w_end, b_end, dilations, rings, prev, t0, noise,
               cond, cond_hop, gbias, temperature, top_k, top_p, return_logits, forced, tiles=None):
    """The op's reference: a plain-PyTorch loop over the packed tensors, float32 arithmetic.

    Same arguments and results as ``torch.ops.arkern.wavenet_generate`` (see
    :func:`arkern.ops.wavenet_decode.wavenet_generate`): per step, embed the last two samples, run every
    gated dilated layer on [ring input of t - d; input of t], sum the skips, apply the head and draw.
    bfloat16 weights: the bfloat16 precision, every matrix input rounded to bfloat16 (``q`` below) and the
    products summed in float32. ``tiles`` (the AMX copy of the same weights) is not needed here.
    """
    A, R = emb.shape[1], emb.shape[2]
    L, Rp, Ap = len(dilations), pad16(R), pad16(A)
    Sp = b_rs.shape[1] - Rp
    S = w_out.numel() // Ap
    wd = [unpack_matrix(w, 2 * Rp, 2 * R) for w in w_dil.reshape(L, -1)]
    wrs = [unpack_matrix(w, Rp + Sp, R) for w in w_rs.reshape(L, -1)]
    wo, we = unpack_matrix(w_out, Ap, S)[:A], unpack_matrix(w_end, Ap, A)[:A]
    B, T = noise.shape
    samples = prev.new_empty((B, T))
    logits_all = []
    rows = torch.arange(B, device=emb.device)

    def q(v: torch.Tensor) -> torch.Tensor:  # a matrix input: rounded to bfloat16 in the bfloat16 precision
        return v.to(torch.bfloat16).to(torch.float32) if w_dil.dtype == torch.bfloat16 else v

    for s in range(T):
        t = t0 + s
        x = emb[0, prev[:, 0]] + emb[1, prev[:, 1]]
        skip = torch.zeros(B, S, dtype=torch.float32, device=emb.device)
        for i, d in enumerate(dilations):
            past = rings[i][:, :, t % d].clone()
            rings[i][:, :, t % d] = q(x)
            pre = torch.cat([past, q(x)], 1) @ wd[i].t() + b_dil[i]
            pre = torch.cat([pre[:, :R], pre[:, Rp:Rp + R]], 1)
            if cond is not None:
                pre = pre + cond[rows, t // cond_hop, i]
            if gbias is not None:
                pre = pre + gbias[:, i]
            g = torch.tanh(pre[:, :R]) * torch.sigmoid(pre[:, R:])
            rs = q(g) @ wrs[i].t() + b_rs[i]
            x = x + rs[:, :R]
            skip = skip + rs[:, Rp:Rp + S]
        logits = q(F.relu(q(F.relu(skip)) @ wo.t() + b_out[:A])) @ we.t() + b_end[:A]
        if forced is not None:
            y = forced[:, s]
        else:
            y = sample_categorical(logits, noise[:, s], temperature=temperature, top_k=top_k or None,
                                   top_p=top_p if top_p < 1 else None)
        samples[:, s] = y
        prev[:, 0] = prev[:, 1]
        prev[:, 1] = y
        logits_all.append(logits)
    out = torch.stack(logits_all, 1) if return_logits and T else emb.new_empty((B, T, A) if return_logits else 0)
    return samples, out
