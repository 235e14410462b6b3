"""Reference of the fused PixelCNN / Gated PixelCNN sampler (``torch.ops.arkern.pixelcnn_generate``).

The packed layout is defined here. A network is described by a :class:`PixelCNNLayout` (17 ints, the op's
``config``) and an input table (level -> the first layer's input values); its weights are one matrix per
(layer, output colour group) holding only the taps the layer's mask keeps, columns ordered (kernel row, kernel
column, input channel) — the order of the caches — rows zero-padded to a multiple of 16 and stored as row
tiles of up to ``TILE`` outputs, each tile transposed (n x width) and contiguous; bfloat16 tiles interleave
pairs of 16-output groups (:func:`bf16_order`). :func:`matrix_shapes` and :func:`cache_specs` list the
matrices and caches a layout has, in the kernel's order.

:func:`pixelcnn_generate` runs the op in plain PyTorch over those packed tensors: the ground truth of the
C++ kernel and its benchmark baseline.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from arkern.distributions import sample_categorical

TILE = 64  # outputs per packed row tile


class PixelCNNLayout(NamedTuple):
    """The architecture the fused PixelCNN kernel runs (the op's ``config`` ints, in this order).

    kind: 0 PixelCNN, 1 Gated PixelCNN. channels: image channels C (= colour groups). classes: levels K.
    hidden: feature channels h. depth: blocks (PixelCNN) or gated layers (Gated PixelCNN).
    a_height, a_width: kernel of the mask-A input conv (PixelCNN) or of the vertical-stack convs (Gated,
    layers after the first). b_height, b_width: kernel of the block's spatial conv (PixelCNN) or of the
    horizontal-stack convs (Gated, after the first).
    input_width: E, the values per colour group of the input table (1: a scalar per level, the model's
    ``prepare``; an embedding's width otherwise); the first layer sees C*E input channels.
    residual: PixelCNN blocks with (1) or without (0) their 1x1 conv and skip connection; 1 for Gated.
    aligned: Gated only: 0 the link takes the vertical pre-activations (class bias included) of the row
    above; 1 the vertical stack reads the image shifted down one row and the link takes the same row's
    pre-activations before the class bias. first_height, first_width, first_hwidth: Gated only, the first
    layer's vertical kernel and horizontal kernel width (0 for PixelCNN).
    head_hidden: hh, the head's inner width. head_relu: 1 if the head starts with a ReLU.
    """

    kind: int
    channels: int
    classes: int
    hidden: int
    depth: int
    a_height: int
    a_width: int
    b_height: int
    b_width: int
    input_width: int
    residual: int
    aligned: int
    first_height: int
    first_width: int
    first_hwidth: int
    head_hidden: int
    head_relu: int


def pad16(n: int) -> int:
    """n rounded up to a multiple of 16 (the kernels' row padding)."""
    return (n + 15) // 16 * 16


def bf16_order(width: int) -> list[int]:
    """Output stored at each position of a bfloat16 tile row: each pair of 16-output groups interleaved
    (outputs k and 16 + k side by side, one 32-bit lane), a last lone group of 16 as is."""
    order = []
    for p in range(0, width - 31, 32):
        for k in range(16):
            order += [p + k, p + 16 + k]
    return order + list(range(len(order), width))


def untile_matrix(packed: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Inverse of :func:`tile_matrix`: flat tiles -> W (m × n), in the packed dtype."""
    rows, off, mp = [], 0, pad16(m)
    for m0 in range(0, mp, TILE):
        width = min(TILE, mp - m0)
        tile = packed[off:off + width * n].reshape(n, width)
        if packed.dtype == torch.bfloat16:
            tile = tile[:, torch.argsort(torch.tensor(bf16_order(width)))]
        rows.append(tile.t())
        off += width * n
    return torch.cat(rows)[:m] if rows else packed.new_zeros(m, n)


def matrix_shapes(config: list[int]) -> list[tuple[int, int]]:
    """(m, n) of every packed matrix for `config`, in the order of the weight list (mirrors the C++)."""
    lay = PixelCNNLayout(*config)
    kind, c, k, h, depth, kh_a, kw_a, kh_b, kw_b, e = lay[:10]
    shapes: list[tuple[int, int]] = []

    def masked(cin: int, cout: int, kh: int, kw: int, mask_a: bool) -> None:
        shapes.extend((cout // c, (kh // 2) * kw * cin + (kw // 2) * cin + (g if mask_a else g + 1) * (cin // c))
                      for g in range(c))

    if kind == 0:
        masked(c * e, h, kh_a, kw_a, True)
        for _ in range(depth):
            masked(h, h, kh_b, kw_b, False)
            if lay.residual:
                masked(h, h, 1, 1, False)
    else:
        for layer in range(depth):
            cin, (kh, kw, kwh) = (c * e if layer == 0 else h), gated_kernels(lay, layer)
            shapes += [(2 * h, kh * kw * cin), (2 * h, 2 * h)]
            masked(cin, 2 * h, 1, kwh, layer == 0)
            masked(h, h, 1, 1, False)
    masked(h, lay.head_hidden, 1, 1, False)
    masked(lay.head_hidden, c * k, 1, 1, False)
    return shapes


def gated_kernels(lay: PixelCNNLayout, layer: int) -> tuple[int, int, int]:
    """Gated layer `layer`'s (vertical height, vertical width, horizontal width)."""
    if layer == 0:
        return lay.first_height, lay.first_width, lay.first_hwidth
    return lay.a_height, lay.a_width, lay.b_width


def tile_splits(config: list[int]) -> list[int]:
    """Per matrix, the input where its AMX copy is cut in two, 0 if it is not (mirrors the C++): a PixelCNN's
    spatial convs multiply the taps of the rows above once per image row and the current row's per pixel."""
    lay = PixelCNNLayout(*config)
    splits = [0] * len(matrix_shapes(config))
    if lay.kind == 0:
        c, per_block = lay.channels, lay.channels * (2 if lay.residual else 1)
        for g in range(c):
            splits[g] = (lay.a_height // 2) * lay.a_width * c * lay.input_width
            for blk in range(lay.depth):
                splits[c + blk * per_block + g] = (lay.b_height // 2) * lay.b_width * lay.hidden
    return splits


def cache_specs(config: list[int]) -> list[tuple[int, int, int]]:
    """(ring rows, pad columns per side, channels) of every cache for `config` (mirrors the C++)."""
    lay = PixelCNNLayout(*config)
    kind, c, _, h, depth, kh_a, kw_a, kh_b, kw_b, e = lay[:10]
    if kind == 0:
        return [(kh_a // 2 + 1, kw_a // 2, c * e)] + [(kh_b // 2 + 1, kw_b // 2, h)] * depth
    specs = []
    for layer in range(depth):
        cin, (kh, kw, kwh) = (c * e if layer == 0 else h), gated_kernels(lay, layer)
        specs += [(kh, kw // 2, cin), (1, kwh // 2, cin)]
    return specs


def pixelcnn_generate(config, weights, biases, input_table, caches, image, noise, cond, row_begin, row_end,
                      temperature, top_k, top_p, return_logits, forced, tiles=()):
    """The op in plain PyTorch over the packed tensors, all batch rows at once.

    Same arguments and results as ``torch.ops.arkern.pixelcnn_generate`` (see
    :func:`arkern.ops.pixelcnn_decode.pixelcnn_generate`). Raster order; at pixel (i, j) colour sub-step g
    runs output group g of every layer over the cached taps, then draws channel g and writes its value
    (the E values ``input_table[v]``) into the input caches. Gated PixelCNN first runs its vertical stack for
    the whole row. bfloat16 weights: the bfloat16 precision, the input of every matrix product rounded to
    bfloat16 (in ``lin``), products summed in float32. ``tiles`` (the AMX copy of the same weights) is not
    needed here.
    """
    lay = PixelCNNLayout(*config)
    kind, C, K, h, depth, kh_a, kw_a, kh_b, kw_b, E = lay[:10]
    hh, hhg = lay.head_hidden, lay.head_hidden // C
    B, _, H, W = image.shape
    dt = biases[0].dtype
    mats = [(untile_matrix(w, m, n).to(dt), b[:m]) for w, b, (m, n) in zip(weights, biases, matrix_shapes(config))]
    hg = h // C
    if row_begin == 0:
        for c in caches:
            c.zero_()

    bf16 = weights[0].dtype == torch.bfloat16

    def lin(idx: int, x: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, m)
        w, b = mats[idx]
        x = x[:, :w.shape[1]]
        return (x.to(torch.bfloat16).to(dt) if bf16 else x) @ w.t() + b

    def taps(cache: torch.Tensor, top: int, full: int, col: int, kw: int, tail: int) -> torch.Tensor:
        rows = cache.shape[1]
        parts = [cache.new_zeros(B, kw * cache.shape[3]) if top + t < 0 else
                 cache[:, (top + t) % rows, col:col + kw].reshape(B, -1) for t in range(full)]
        parts.append(cache[:, (top + full) % rows, col:].reshape(B, -1)[:, :tail])
        return torch.cat(parts, 1)

    def gate(x: torch.Tensor, n: int) -> torch.Tensor:
        return torch.tanh(x[:, :n]) * torch.sigmoid(x[:, n:2 * n])

    gx = lambda layer, k: layer * (2 + 2 * C) + k
    x = torch.zeros(B, h, dtype=dt)
    act = torch.zeros(B, max(depth, 1), h, dtype=dt)
    hin1, hin2 = torch.zeros(B, h, dtype=dt), torch.zeros(B, hh, dtype=dt)
    links = torch.zeros(B, depth, W, 2 * h, dtype=dt)
    logits = image.new_zeros(0, dtype=dt)
    if return_logits:
        logits = torch.zeros(B, row_end - row_begin, W, C * K, dtype=dt)
    for i in range(row_begin, row_end):
        if kind == 1:  # vertical stack on row i - 1 (aligned: row i of the down-shifted image) -> link rows
            ip = i if lay.aligned else i - 1
            for layer in range(depth):
                if ip < 0:  # nothing above row 0: the link sees zeros
                    links[:, layer] = mats[gx(layer, 1)][1]
                    continue
                kh, kw, _ = gated_kernels(lay, layer)
                for j in range(W):
                    v_pre = lin(gx(layer, 0), taps(caches[2 * layer], ip - kh + 1, kh, j, kw, 0))
                    if lay.aligned:  # the link before the class bias
                        links[:, layer, j] = lin(gx(layer, 1), v_pre)
                    if cond is not None:
                        v_pre = v_pre + cond[:, layer]
                    if not lay.aligned:
                        links[:, layer, j] = lin(gx(layer, 1), v_pre)
                    if layer + 1 < depth:
                        caches[2 * layer + 2][:, ip % kh_a, j + kw_a // 2] = gate(v_pre, h)
        for j in range(W):
            for g in range(C):
                sl = slice(g * hg, (g + 1) * hg)
                if kind == 0:
                    ra, rb, per = kh_a // 2, kh_b // 2, 1 + lay.residual  # matrices per block
                    x[:, sl] = lin(g, taps(caches[0], i - ra, ra, j, kw_a, (kw_a // 2) * C * E + g * E))
                    for blk in range(depth):
                        caches[1 + blk][:, i % (rb + 1), j + kw_b // 2, sl] = torch.relu(x[:, sl])
                        t = lin((1 + per * blk) * C + g, taps(caches[1 + blk], i - rb, rb, j, kw_b,
                                                              (kw_b // 2) * h + (g + 1) * hg))
                        if not lay.residual:  # a plain block: its conv's output is the next block's input
                            x[:, sl] = t
                            continue
                        act[:, blk, sl] = torch.relu(t)
                        x[:, sl] += lin((2 + 2 * blk) * C + g, act[:, blk])
                else:
                    for layer in range(depth):
                        cin, kwh = (C * E if layer == 0 else h), gated_kernels(lay, layer)[2]
                        if layer:
                            caches[2 * layer + 1][:, 0, j + kwh // 2, sl] = x[:, sl]
                        pre = lin(gx(layer, 2 + g), taps(caches[2 * layer + 1], i, 0, j, kwh,
                                                         (kwh // 2) * cin + (g if layer == 0 else g + 1) * (cin // C)))
                        pre = pre + links[:, layer, j, 2 * g * hg:2 * (g + 1) * hg]
                        if cond is not None:
                            pre = pre + cond[:, layer, 2 * g * hg:2 * (g + 1) * hg]
                        act[:, layer, sl] = gate(pre, hg)
                        out = lin(gx(layer, 2 + C + g), act[:, layer])
                        x[:, sl] = out if layer == 0 else x[:, sl] + out
                n_mats = len(mats)
                hin1[:, sl] = torch.relu(x[:, sl]) if lay.head_relu else x[:, sl]
                hin2[:, g * hhg:(g + 1) * hhg] = torch.relu(lin(n_mats - 2 * C + g, hin1))
                lg = lin(n_mats - C + g, hin2)
                if forced is not None:
                    v = forced[:, g, i, j]
                else:
                    v = sample_categorical(lg, noise[:, g, i, j], temperature=temperature, top_k=top_k or None,
                                           top_p=top_p if top_p < 1 else None)
                image[:, g, i, j] = v
                if return_logits:
                    logits[:, i - row_begin, j, g * K:(g + 1) * K] = lg
                xv, ge = input_table[v], slice(g * E, (g + 1) * E)  # (B, E): the first layer's inputs
                if kind == 0:
                    caches[0][:, i % caches[0].shape[1], j + kw_a // 2, ge] = xv
                else:
                    _, kw0, kwh0 = gated_kernels(lay, 0)
                    row = i + 1 if lay.aligned else i  # aligned: the vertical stack reads the image shifted down
                    caches[0][:, row % caches[0].shape[1], j + kw0 // 2, ge] = xv
                    caches[1][:, 0, j + kwh0 // 2, ge] = xv
    return logits
