"""Triton WaveNet decode: one kernel launch advances every layer of one step for a batch of rows.

Semantics: :func:`arkern.ops.wavenet_decode.wavenet_generate` (its plain-PyTorch ``_reference`` and the
C++ kernel csrc/cpu/wavenet_decode.cpp). The driver :func:`wavenet_generate` is a Python loop over the T
steps; step s is one launch of :func:`_step` over ceil(B / BLOCK_B) programs, each owning BLOCK_B batch
rows, so every weight tile it loads is used by all of its rows:

  embedding of the previous two samples -> for each layer: the K=2 dilated conv from the layer's ring
  buffer (input d steps ago) and this step's input, local / global conditioning, the gate
  tanh(a)·sigmoid(b), the residual and skip 1x1s -> the head relu -> 1x1 -> relu -> 1x1 -> the draw.

The matrices are read in their packed layout (pack_wavenet: rows zero-padded to a multiple of 16,
tiles of up to 64 rows stored transposed), so the Triton, C++ and CUDA kernels share one set of packed
weights. Activations that a later matrix-vector product reads in chunks (layer input, gate output,
head hidden layers) go through a small per-row scratch in global memory, with a CTA barrier between
the write and the reads. The ring buffers are the caller's (B, R, d) time-major tensors; the kernel
reaches them through a table of their addresses (one compiled kernel for any number of layers).

The draw follows arkern.sampling.sample_categorical in float64 on the kernel's float32 logits:
temperature, top-k (keep classes with fewer than k strictly larger logits — the same set as keeping
z >= k-th largest), top-p (the probability mass ranked above a class, ties broken by class index, is
compared with top_p; its sums run sequentially, in the reference's order, because a round top_p is hit
exactly by tied probabilities), then the first class whose running sum exceeds u · total. That running
sum is tl.cumsum: sequential in the interpreter, a parallel scan on a GPU, where it can differ from the
sequential sum in the last bit of a float64 — which changes a draw only for a uniform within ~1e-16 of
a class boundary.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from arkern.reference.wavenet_decode import TILE


@triton.jit
def _rows(Mp, N, mrow, TILE_M: tl.constexpr):
    # Where rows mrow of a packed W (Mp x N) live: row m is in the tile starting at m0 = m - m % TILE_M, of
    # width min(TILE_M, Mp - m0), and its column j at m0 * N + j * width + m - m0. Returns (base, width).
    m0 = (mrow // TILE_M) * TILE_M
    width = tl.minimum(Mp - m0, TILE_M)
    return m0 * N + (mrow - m0), width


@triton.jit
def _q(x, w_ptr):
    # the bfloat16 precision (bfloat16 weights): every matrix input is rounded to bfloat16, to nearest even (in
    # integer arithmetic: the interpreter's float conversion truncates)
    if w_ptr.dtype.element_ty == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        x = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return x


@triton.jit
def _matvec(acc, w_ptr, wbase, width, mmask, in_ptrs, n_in, rmask, BLOCK_K: tl.constexpr):
    # acc (BB, M) += in (BB, n_in) @ W[rows, :n_in]^T, the rows given by _rows (lanes with mmask false
    # give 0); in_ptrs (BB,) points at each batch row's input vector.
    for k0 in range(0, n_in, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < n_in
        x = _q(tl.load(in_ptrs[:, None] + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0), w_ptr)
        w = tl.load(w_ptr + wbase[:, None] + k[None, :] * width[:, None], mask=mmask[:, None] & kmask[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
    return acc


@triton.jit
def _draw(lg, zs_ptrs, params_ptr, u, top_k, A, rmask,
          TOP_K: tl.constexpr, TOP_P: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_J: tl.constexpr):
    # lg (BB, BLOCK_A) float32 logits -> (BB,) int64 classes drawn at the uniforms u (BB,) float64.
    # zs_ptrs (BB,) float64 scratch rows of 2 * BLOCK_A values.
    i = tl.arange(0, BLOCK_A)
    valid = rmask[:, None] & (i < A)[None, :]
    temperature = tl.load(params_ptr)
    z = tl.where(valid, lg.to(tl.float64) / temperature, -float("inf"))
    if TOP_K:
        # keep z_i iff fewer than k classes have a strictly larger z (same set as z_i >= k-th largest)
        tl.store(zs_ptrs[:, None] + i[None, :], z, mask=valid)
        tl.debug_barrier()
        larger = tl.zeros(z.shape, dtype=tl.int32)
        for j0 in range(0, A, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            zj = tl.load(zs_ptrs[:, None] + j[None, :], mask=rmask[:, None] & (j < A)[None, :],
                         other=-float("inf"))
            larger += tl.sum((zj[:, None, :] > z[:, :, None]).to(tl.int32), axis=2)
        z = tl.where(larger < top_k, z, -float("inf"))
        tl.debug_barrier()
    zmax = tl.where(rmask, tl.max(z, axis=1), 0.0)  # rows past B: all -inf, kept finite
    e = tl.where(valid, tl.exp(z - zmax[:, None]), 0.0)
    if TOP_P:
        # Drop a class once the probability mass ranked above it (larger e, or equal e and lower index)
        # reaches top_p. top_p is a round user constant that tied probabilities hit exactly, so the two
        # sums run sequentially, in the order of sample_categorical and the C++ Sampler: the total in class
        # order, the mass before a class in rank order (scratch row: values | drop flags by rank).
        top_p = tl.load(params_ptr + 1)
        tl.store(zs_ptrs[:, None] + i[None, :], e, mask=valid)
        tl.debug_barrier()
        total = tl.zeros(u.shape, dtype=tl.float64)
        for jj in range(0, A):
            total += tl.load(zs_ptrs + jj, mask=rmask, other=0.0)
        total = tl.where(rmask, total, 1.0)
        rank = tl.zeros(e.shape, dtype=tl.int32)
        for j0 in range(0, A, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            ej = tl.load(zs_ptrs[:, None] + j[None, :], mask=rmask[:, None] & (j < A)[None, :], other=0.0)
            above = (ej[:, None, :] > e[:, :, None]) | ((ej[:, None, :] == e[:, :, None])
                                                       & (j[None, None, :] < i[None, :, None]))
            rank += tl.sum((above & (j < A)[None, None, :]).to(tl.int32), axis=2)
        tl.debug_barrier()
        tl.store(zs_ptrs[:, None] + rank, e / total[:, None], mask=valid)  # probabilities in rank order
        tl.debug_barrier()
        before = tl.zeros(u.shape, dtype=tl.float64)
        for jj in range(0, A):
            tl.store(zs_ptrs + BLOCK_A + jj, (before >= top_p).to(tl.float64), mask=rmask)
            before += tl.load(zs_ptrs + jj, mask=rmask, other=0.0)
        tl.debug_barrier()
        drop = tl.load(zs_ptrs[:, None] + BLOCK_A + rank, mask=valid, other=0.0)
        e = tl.where(drop != 0.0, 0.0, e)
        tl.debug_barrier()
    cdf = tl.cumsum(e, axis=1)
    target = u * tl.max(cdf, axis=1)  # e >= 0: the running sum's maximum is its last value
    idx = tl.sum((valid & (cdf <= target[:, None])).to(tl.int64), axis=1)
    last_kept = tl.max(tl.where(e > 0, i[None, :], 0), axis=1).to(tl.int64)
    return tl.where(idx >= A, last_kept, idx)


@triton.jit
def _step(emb_ptr, wd_ptr, bd_ptr, wrs_ptr, brs_ptr, wo_ptr, bo_ptr, we_ptr, be_ptr,
          ring_tab_ptr, ring_strides_ptr, dil_ptr, prev_ptr, noise_ptr, forced_ptr, samples_ptr, logits_ptr,
          cond_ptr, gbias_ptr, params_ptr, scratch_ptr, zscratch_ptr,
          s, t, T, B, L, R, S, A, Rp, Sp, Ap, cond_frames, cond_hop, top_k, WS,
          TILE_M: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_RS: tl.constexpr,
          BLOCK_A: tl.constexpr, K_DIL: tl.constexpr, K_RS: tl.constexpr, K_OUT: tl.constexpr,
          K_END: tl.constexpr, BLOCK_J: tl.constexpr, HAS_COND: tl.constexpr, HAS_GBIAS: tl.constexpr,
          FORCED: tl.constexpr, RETURN_LOGITS: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr):
    # Program p owns rows p*BLOCK_B ... Lane layouts:
    #   state (BB, BLOCK_RS): the packed [residual; skip] rows, lanes [0, R) = x (this layer's input),
    #     lanes [Rp, Rp + S) = the skip sum; every padded row of w_rs / b_rs is zero, so state += rs.
    #   pre (BB, 2 * BLOCK_R): lane q < BLOCK_R is tanh row q, lane BLOCK_R + q is sigmoid row Rp + q.
    # Scratch row (float32): in2 = [x(t - d); x(t)] (2R) | g (R) | relu(state) (BLOCK_RS) | head hidden (A).
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    rows = rows.to(tl.int64)
    scr = scratch_ptr + rows * WS
    in2_ptrs, g_ptrs = scr, scr + 2 * R
    h_ptrs, o_ptrs = scr + 3 * R, scr + 3 * R + BLOCK_RS

    r = tl.arange(0, BLOCK_R)
    rv = r < R
    m2 = rmask[:, None] & rv[None, :]
    q = tl.arange(0, 2 * BLOCK_R)
    qc = q % BLOCK_R  # channel of lane q in its half
    qv = qc < R
    q_row = tl.where(q < BLOCK_R, qc, Rp + qc)  # packed row of w_dil / b_dil
    q_col = tl.where(q < BLOCK_R, qc, R + qc)  # column of the 2R conditioning vectors
    mq = rmask[:, None] & qv[None, :]
    c = tl.arange(0, BLOCK_RS)
    cv = c < Rp + Sp
    i = tl.arange(0, BLOCK_A)
    iv = i < A
    dil_base, dil_width = _rows(2 * Rp, 2 * R, q_row, TILE_M)
    rs_base, rs_width = _rows(Rp + Sp, R, c, TILE_M)
    out_base, out_width = _rows(Ap, S, i, TILE_M)
    end_base, end_width = _rows(Ap, A, i, TILE_M)

    older = tl.load(prev_ptr + rows * 2, mask=rmask, other=0)
    newer = tl.load(prev_ptr + rows * 2 + 1, mask=rmask, other=0)
    mx = rmask[:, None] & (c < R)[None, :]
    state = (tl.load(emb_ptr + older[:, None] * R + c[None, :], mask=mx, other=0.0)
             + tl.load(emb_ptr + (A + newer)[:, None] * R + c[None, :], mask=mx, other=0.0))
    for layer in range(0, L):
        d = tl.load(dil_ptr + layer)
        ring = tl.load(ring_tab_ptr + layer).to(tl.pointer_type(tl.float32), bitcast=True)
        # time-major: the R inputs of time t - d, replaced by x(t); rows and slots as the ring's strides say
        row_stride = tl.load(ring_strides_ptr + 2 * layer)
        slot_stride = tl.load(ring_strides_ptr + 2 * layer + 1)
        slot = ring + rows * row_stride + (t % d) * slot_stride
        past = tl.load(slot[:, None] + r[None, :], mask=m2, other=0.0)
        tl.store(in2_ptrs[:, None] + r[None, :], past, mask=m2)
        tl.store(in2_ptrs[:, None] + R + c[None, :], state, mask=mx)
        tl.debug_barrier()  # the old slot is read (by every thread) before it is overwritten
        tl.store(slot[:, None] + c[None, :], _q(state, wd_ptr), mask=mx)  # the ring holds matrix inputs
        pre = tl.zeros((BLOCK_B, 2 * BLOCK_R), dtype=tl.float32) + tl.load(bd_ptr + layer * 2 * Rp + q_row,
                                                                          mask=qv, other=0.0)
        pre = _matvec(pre, wd_ptr + layer * (2 * Rp * 2 * R), dil_base, dil_width, qv, in2_ptrs, 2 * R, rmask, K_DIL)
        if HAS_COND:
            cp = cond_ptr + ((rows * cond_frames + t // cond_hop) * L + layer) * 2 * R
            pre += tl.load(cp[:, None] + q_col[None, :], mask=mq, other=0.0)
        if HAS_GBIAS:
            gp = gbias_ptr + (rows * L + layer) * 2 * R
            pre += tl.load(gp[:, None] + q_col[None, :], mask=mq, other=0.0)
        a, b = tl.split(tl.permute(tl.reshape(pre, (BLOCK_B, 2, BLOCK_R)), (0, 2, 1)))
        g = (1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)) / (1.0 + tl.exp(-b))  # tanh(a) * sigmoid(b)
        tl.store(g_ptrs[:, None] + r[None, :], g, mask=m2)
        tl.debug_barrier()
        rs = tl.zeros((BLOCK_B, BLOCK_RS), dtype=tl.float32) + tl.load(brs_ptr + layer * (Rp + Sp) + c, mask=cv,
                                                                       other=0.0)
        state += _matvec(rs, wrs_ptr + layer * ((Rp + Sp) * R), rs_base, rs_width, cv, g_ptrs, R, rmask, K_RS)
        # no barrier needed here: the next layer writes in2 and g only after barriers that follow every read

    tl.store(h_ptrs[:, None] + c[None, :], tl.maximum(state, 0.0), mask=rmask[:, None] & cv[None, :])
    tl.debug_barrier()
    o = tl.zeros((BLOCK_B, BLOCK_A), dtype=tl.float32) + tl.load(bo_ptr + i, mask=iv, other=0.0)
    o = tl.maximum(_matvec(o, wo_ptr, out_base, out_width, iv, h_ptrs + Rp, S, rmask, K_OUT), 0.0)
    tl.store(o_ptrs[:, None] + i[None, :], o, mask=rmask[:, None] & iv[None, :])
    tl.debug_barrier()
    lg = tl.zeros((BLOCK_B, BLOCK_A), dtype=tl.float32) + tl.load(be_ptr + i, mask=iv, other=0.0)
    lg = _matvec(lg, we_ptr, end_base, end_width, iv, o_ptrs, A, rmask, K_END)

    at = rows * T + s
    if FORCED:
        y = tl.load(forced_ptr + at, mask=rmask, other=0)
    else:
        u = tl.load(noise_ptr + at, mask=rmask, other=0.0)
        y = _draw(lg, zscratch_ptr + rows * 2 * BLOCK_A, params_ptr, u, top_k, A, rmask, TOP_K, TOP_P, BLOCK_A,
                  BLOCK_J)
    tl.store(samples_ptr + at, y, mask=rmask)
    if RETURN_LOGITS:
        tl.store(logits_ptr + at[:, None] * A + i[None, :], lg, mask=rmask[:, None] & iv[None, :])
    tl.store(prev_ptr + rows * 2, newer, mask=rmask)
    tl.store(prev_ptr + rows * 2 + 1, y, mask=rmask)


@triton.jit
def _draw_rows(logits_ptr, u_ptr, out_ptr, zscratch_ptr, params_ptr, n, top_k, A,
               TOP_K: tl.constexpr, TOP_P: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr,
               BLOCK_J: tl.constexpr):
    # the draw of :func:`_step` on its own: rows of contiguous float32 logits (n, A)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < n
    rows = rows.to(tl.int64)
    i = tl.arange(0, BLOCK_A)
    lg = tl.load(logits_ptr + rows[:, None] * A + i[None, :], mask=rmask[:, None] & (i < A)[None, :], other=0.0)
    u = tl.load(u_ptr + rows, mask=rmask, other=0.0)
    y = _draw(lg, zscratch_ptr + rows * 2 * BLOCK_A, params_ptr, u, top_k, A, rmask, TOP_K, TOP_P, BLOCK_A, BLOCK_J)
    tl.store(out_ptr + rows, y, mask=rmask)


def sample_categorical(logits: torch.Tensor, u: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None) -> torch.Tensor:
    """The decode kernel's in-kernel draw on given logits: float32 (n, A), float64 uniforms (n,) -> (n,) int64.

    Same decisions as :func:`arkern.sampling.sample_categorical` (see the module docstring for the one
    rounding caveat); exposed so that the draw can be checked on its own, ties included.
    """
    n, A = logits.shape
    out = torch.empty(n, dtype=torch.int64, device=logits.device)
    if n == 0:
        return out
    BLOCK_A = _block(A)
    k = top_k or 0
    p = 1.0 if top_p is None else float(top_p)
    params = torch.tensor([temperature, p], dtype=torch.float64, device=logits.device)
    zscratch = torch.empty((n, 2 * BLOCK_A), dtype=torch.float64, device=logits.device)
    BLOCK_B = min(8, triton.next_power_of_2(n))
    _draw_rows[(triton.cdiv(n, BLOCK_B),)](logits.float().contiguous(), u.to(torch.float64).contiguous(), out,
                                            zscratch, params, n, k, A, TOP_K=0 < k < A, TOP_P=p < 1.0,
                                            BLOCK_B=BLOCK_B, BLOCK_A=BLOCK_A,
                                            BLOCK_J=_pair_chunk(BLOCK_B, BLOCK_A, logits.device))
    return out


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _chunk(rows: int, block_m: int, n_in: int, device: torch.device) -> int:
    """Inputs per chunk of a matrix-vector product.

    On a GPU the (rows x block_m x chunk) product lives in registers: keep it near 4096 values. In the
    interpreter (CPU tensors) every loop iteration is a round of NumPy calls: take all inputs at once.
    """
    whole = triton.next_power_of_2(n_in)
    return whole if device.type == "cpu" else max(1, min(whole, 4096 // (rows * block_m)))


def _pair_chunk(rows: int, block_a: int, device: torch.device) -> int:
    """Classes per chunk of the pairwise top-k / top-p passes (same trade-off as :func:`_chunk`)."""
    return block_a if device.type == "cpu" else max(1, min(block_a, 4096 // (rows * block_a)))


def wavenet_generate(emb, w_dil, b_dil, w_rs, b_rs, w_out, b_out, w_end, b_end, dilations, rings, prev, t0, noise,
                     cond, cond_hop, gbias, temperature, top_k, top_p, return_logits, forced
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``triton`` backend of ``wavenet_generate`` (same arguments as the op's schema).

    Runs T = noise.shape[1] launches of :func:`_step`; rings and prev are updated in place.
    """
    A, R = emb.shape[1], emb.shape[2]
    L = len(dilations)
    Rp, Ap = -(-R // 16) * 16, -(-A // 16) * 16
    Sp = b_rs.shape[1] - Rp
    S = w_out.numel() // Ap
    B, T = noise.shape
    device = noise.device
    noise, cond, gbias, forced = (None if t is None else t.contiguous() for t in (noise, cond, gbias, forced))
    tensors = {"emb": emb, "w_dil": w_dil, "b_dil": b_dil, "w_rs": w_rs, "b_rs": b_rs, "w_out": w_out,
               "b_out": b_out, "w_end": w_end, "b_end": b_end, "prev": prev, "cond": cond, "gbias": gbias,
               "forced": forced, **{f"rings[{i}]": ring for i, ring in enumerate(rings)}}
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != device:
            raise ValueError(f"wavenet_generate (triton): {name} is on {tensor.device} but noise is on {device}")
        if tensor is not None and not name.startswith("rings") and not tensor.is_contiguous():
            raise ValueError(f"wavenet_generate (triton): {name} must be contiguous (packed weights and prev are)")
    samples = torch.empty((B, T), dtype=torch.int64, device=device)
    logits = emb.new_empty((B, T, A) if return_logits else (0,))
    if B == 0 or T == 0:
        return samples, logits
    BLOCK_B = min(8, triton.next_power_of_2(B))
    BLOCK_R, BLOCK_RS, BLOCK_A = _block(R), _block(Rp + Sp), _block(A)
    WS = 3 * R + BLOCK_RS + BLOCK_A
    scratch = torch.empty((B, WS), dtype=torch.float32, device=device)
    zscratch = torch.empty((B, 2 * BLOCK_A), dtype=torch.float64, device=device)
    ring_tab = torch.tensor([ring.data_ptr() for ring in rings], dtype=torch.int64, device=device)
    ring_strides = torch.tensor([[ring.stride(0), ring.stride(2)] for ring in rings], dtype=torch.int64, device=device)
    dil = torch.tensor(list(dilations), dtype=torch.int64, device=device)
    params = torch.tensor([temperature, top_p], dtype=torch.float64, device=device)
    cond_frames = cond.shape[1] if cond is not None else 1
    grid = (triton.cdiv(B, BLOCK_B),)
    for s in range(T):
        _step[grid](emb, w_dil, b_dil, w_rs, b_rs, w_out, b_out, w_end, b_end,
                    ring_tab, ring_strides, dil, prev, noise, forced if forced is not None else prev, samples,
                    logits if return_logits else b_end, cond if cond is not None else b_end,
                    gbias if gbias is not None else b_end, params, scratch, zscratch,
                    s, t0 + s, T, B, L, R, S, A, Rp, Sp, Ap, cond_frames, max(1, cond_hop), top_k, WS,
                    TILE_M=TILE, BLOCK_B=BLOCK_B, BLOCK_R=BLOCK_R, BLOCK_RS=BLOCK_RS, BLOCK_A=BLOCK_A,
                    K_DIL=_chunk(BLOCK_B, 2 * BLOCK_R, 2 * R, device), K_RS=_chunk(BLOCK_B, BLOCK_RS, R, device),
                    K_OUT=_chunk(BLOCK_B, BLOCK_A, S, device), K_END=_chunk(BLOCK_B, BLOCK_A, A, device),
                    BLOCK_J=_pair_chunk(BLOCK_B, BLOCK_A, device),
                    HAS_COND=cond is not None, HAS_GBIAS=gbias is not None, FORCED=forced is not None,
                    RETURN_LOGITS=return_logits, TOP_K=0 < top_k < A, TOP_P=top_p < 1.0)
    return samples, logits
