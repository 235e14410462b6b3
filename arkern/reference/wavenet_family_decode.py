"""Reference of the generalised fused WaveNet sampler (``torch.ops.arkern.wavenet_family_generate``), in plain
PyTorch, and the definition of its packed layout.

Matrices are packed as in :mod:`arkern.reference.wavenet_decode` (rows zero-padded to Mp = ceil16(M), row tiles
of up to 64 outputs, each tile transposed and contiguous). With K the kernel size, R residual, G = 2H gate,
S skip, E end and O head channels, Hp = ceil16(H) etc., per layer: w_dil (2Hp × K·R) on the inputs
[x(t-(K-1)d); ...; x(t-d); x(t)] (row blocks tanh half, sigmoid half, each padded), b_dil (2Hp); w_rs
((Rp + Sp) × H) giving [residual; skip], b_rs; then w_out (Ep × S), b_out (Ep), w_end (Op × E), b_end (Op).
emb: (2, A, R) tables of the classes y[t-2], y[t-1] (embedding inputs), or (2, R) = [w; b] with input
w · y[t-1] + b (scalar input). The model's residual and skip scalings are folded in at pack time
(:func:`arkern.models.wavenet.pack_wavenet_family`); the last layer's residual rows are zero.

``dims = [K, R, H, S, E, O, A, M, input, head]``; input 0 embedding / 1 scalar; head 0 softmax, 1 mixture of
logistics, 2 Gaussian (draws: :mod:`arkern.wavenet_heads`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arkern import wavenet_heads as heads
from arkern.reference.wavenet_decode import pad16, unpack_matrix

HEAD_NAMES = ("softmax", "logistic_mixture", "gaussian")


def wavenet_family_generate(emb, w_dil, b_dil, w_rs, b_rs, w_out, b_out, w_end, b_end, dims, dilations, rings, prev,
                            t0, noise, cond, cond_hop, gbias, temperature, top_k, top_p, log_scale_min,
                            return_logits, forced):
    """The op's reference: the network one step at a time over the packed tensors, float32 arithmetic.

    Same arguments and results as :func:`arkern.ops.wavenet_family_decode.wavenet_family_generate`.
    """
    K, R, H, S, E, n_out, A, M, scalar, head = dims
    head_name = HEAD_NAMES[head]
    L, Rp, Hp, Sp, Ep, Op = len(dilations), pad16(R), pad16(H), pad16(S), pad16(E), pad16(n_out)
    wd = [unpack_matrix(w, 2 * Hp, K * R) for w in w_dil.reshape(L, -1)]
    wrs = [unpack_matrix(w, Rp + Sp, H) for w in w_rs.reshape(L, -1)]
    wo, we = unpack_matrix(w_out, Ep, S)[:E], unpack_matrix(w_end, Op, E)[:n_out]
    B, T = noise.shape[:2]
    samples = prev.new_empty((B, T))
    outs = []
    rows = torch.arange(B, device=emb.device)
    warp = dict(temperature=temperature, top_k=top_k or None, top_p=top_p if top_p < 1 else None)
    for s in range(T):
        t = t0 + s
        if scalar:
            x = prev[:, 1:].to(torch.float32) * emb[0] + emb[1]
        else:
            x = emb[0, prev[:, 0]] + emb[1, prev[:, 1]]
        skip = torch.zeros(B, S, dtype=torch.float32, device=emb.device)
        for i, d in enumerate(dilations):
            span = (K - 1) * d
            taps = [rings[i][:, :, (t - (K - 1 - k) * d) % span].clone() for k in range(K - 1)]
            rings[i][:, :, t % span] = x
            pre = torch.cat([*taps, x], 1) @ wd[i].t() + b_dil[i]
            pre = torch.cat([pre[:, :H], pre[:, Hp:Hp + H]], 1)
            if cond is not None:
                pre = pre + cond[rows, t // cond_hop, i]
            if gbias is not None:
                pre = pre + gbias[:, i]
            g = torch.tanh(pre[:, :H]) * torch.sigmoid(pre[:, H:])
            rs = g @ wrs[i].t() + b_rs[i]
            x = x + rs[:, :R]
            skip = skip + rs[:, Rp:Rp + S]
        out = F.relu(F.relu(skip) @ wo.t() + b_out[:E]) @ we.t() + b_end[:n_out]
        if forced is not None:
            y = forced[:, s]
        else:
            y = heads.sample(head_name, out, noise[:, s], log_scale_min=log_scale_min, **warp)
        samples[:, s] = y
        prev[:, 0] = prev[:, 1]
        prev[:, 1] = y
        outs.append(out)
    logits = torch.stack(outs, 1) if return_logits and T else emb.new_empty((B, T, n_out) if return_logits else 0)
    return samples, logits
