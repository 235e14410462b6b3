"""pixelcnn_decode: fused PixelCNN / Gated PixelCNN image sampling, ``torch.ops.arkern.pixelcnn_generate``.

One call runs image rows [row_begin, row_end) of a batch, every pixel, colour sub-step, layer and draw,
without returning to Python. Colour sub-step g computes only output group g of every layer (the masks make
it depend on groups <= g only), so an RGB pixel costs one network pass, not three.

:func:`pack_pixelcnn` packs a model once (cached per model and weights version) into :class:`PixelCNNFused`:

- one matrix per (layer, output colour group) holding only the taps its mask keeps, columns ordered
  (kernel row, kernel column, input channel), which is the order of the caches; rows zero-padded to a
  multiple of 16 and stored as row tiles of up to 64, each tile transposed (n × width) and contiguous
  (:func:`tile_matrix`); float32 (or bfloat16, accumulated in float32) or float64 like the model;
- biases padded the same way; a ``config`` of 9 ints describing the architecture (see the C++ file).

Caches (:meth:`PixelCNNFused.new_caches`): per conv with a spatial kernel, (B, ring rows, W + 2·pad, Cin),
channel fastest; image row i lives in ring slot i % rows. They are the only state carried between calls.

Backends: "cpu" (csrc/cpu/pixelcnn_decode.cpp) and "reference", a readable PyTorch loop over the same
packed tensors and caches. Decode op: no autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arkern.backends import OpBackends
from arkern.ops._library import LIB
from arkern.ops._packcache import cached_pack
from arkern.ops._validate import check_warpers

OP = "pixelcnn_generate"
TILE = 64

LIB.define("pixelcnn_generate(int[] config, Tensor[] weights, Tensor[] biases, Tensor(a!)[] caches, "
           "Tensor(b!) image, Tensor noise, Tensor? cond, int row_begin, int row_end, float temperature, "
           "int top_k, float top_p, bool return_logits, Tensor? forced) -> Tensor")


@torch.library.register_fake("arkern::pixelcnn_generate")
def _fake(config, weights, biases, caches, image, noise, cond, row_begin, row_end, temperature, top_k, top_p,
          return_logits, forced):
    b, c, _, w = image.shape
    shape = (b, row_end - row_begin, w, c * config[2]) if return_logits else (0,)
    return biases[0].new_empty(shape)


def _pad16(n: int) -> int:
    return (n + 15) // 16 * 16


def _bf16_order(width: int) -> list[int]:
    """Output stored at each position of a bfloat16 tile row: each pair of 16-output groups interleaved
    (outputs k and 16 + k side by side, one 32-bit lane), a last lone group of 16 as is."""
    order = []
    for p in range(0, width - 31, 32):
        for k in range(16):
            order += [p + k, p + 16 + k]
    return order + list(range(len(order), width))


def tile_matrix(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W (m × n) -> the kernel's flat tiled layout of ceil16(m) × n elements (zero rows appended)."""
    wp = F.pad(w, (0, 0, 0, _pad16(w.shape[0]) - w.shape[0]))
    tiles = []
    for m0 in range(0, wp.shape[0], TILE):
        tile = wp[m0:m0 + TILE].t()  # (n, width): the weights of one input are contiguous
        if dtype == torch.bfloat16:
            tile = tile[:, _bf16_order(tile.shape[1])]
        tiles.append(tile.reshape(-1))
    return torch.cat(tiles).to(dtype).contiguous()


def untile_matrix(packed: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Inverse of :func:`tile_matrix`: flat tiles -> W (m × n), in the packed dtype."""
    rows, off, mp = [], 0, _pad16(m)
    for m0 in range(0, mp, TILE):
        width = min(TILE, mp - m0)
        tile = packed[off:off + width * n].reshape(n, width)
        if packed.dtype == torch.bfloat16:
            tile = tile[:, torch.argsort(torch.tensor(_bf16_order(width)))]
        rows.append(tile.t())
        off += width * n
    return torch.cat(rows)[:m] if rows else packed.new_zeros(m, n)


def matrix_shapes(config: list[int]) -> list[tuple[int, int]]:
    """(m, n) of every packed matrix for `config`, in the order of the weight list (mirrors the C++)."""
    kind, c, k, h, depth, kh_a, kw_a, _, kw_b = config
    shapes: list[tuple[int, int]] = []

    def masked(cin: int, cout: int, kh: int, kw: int, mask_a: bool) -> None:
        shapes.extend((cout // c, (kh // 2) * kw * cin + (kw // 2) * cin + (g if mask_a else g + 1) * (cin // c))
                      for g in range(c))

    if kind == 0:
        masked(c, h, kh_a, kw_a, True)
        for _ in range(depth):
            masked(h, h, config[7], kw_b, False)
            masked(h, h, 1, 1, False)
    else:
        for layer in range(depth):
            cin = c if layer == 0 else h
            shapes += [(2 * h, kh_a * kw_a * cin), (2 * h, 2 * h)]
            masked(cin, 2 * h, 1, kw_b, layer == 0)
            masked(h, h, 1, 1, False)
    masked(h, h, 1, 1, False)
    masked(h, c * k, 1, 1, False)
    return shapes


def cache_specs(config: list[int]) -> list[tuple[int, int, int]]:
    """(ring rows, pad columns per side, channels) of every cache for `config` (mirrors the C++)."""
    kind, c, _, h, depth, kh_a, kw_a, kh_b, kw_b = config
    if kind == 0:
        return [(kh_a // 2 + 1, kw_a // 2, c)] + [(kh_b // 2 + 1, kw_b // 2, h)] * depth
    specs = []
    for layer in range(depth):
        cin = c if layer == 0 else h
        specs += [(kh_a, kw_a // 2, cin), (1, kw_b // 2, cin)]
    return specs


@dataclass
class PixelCNNFused:
    """A model packed for :func:`pixelcnn_generate` (see the module docstring).

    config: [kind (0 PixelCNN, 1 Gated), C, K, h, depth, kh_a, kw_a, kh_b, kw_b]; weights / biases: one
    flat tensor per matrix in :func:`matrix_shapes` order; dtype: activation dtype (float32 or float64).
    """

    config: list[int]
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    dtype: torch.dtype

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def image_channels(self) -> int:
        return self.config[1]

    @property
    def num_classes(self) -> int:
        return self.config[2]

    def new_caches(self, batch: int, height: int, width: int) -> list[torch.Tensor]:
        """Zeroed caches for `batch` images of `width` columns: [(B, rows, W + 2·pad, Cin)]."""
        return [torch.zeros(batch, rows, width + 2 * pad, cin, dtype=self.dtype)
                for rows, pad, cin in cache_specs(self.config)]


# ------------------------------------------------------------------------------------------ packing


def _masked_matrices(conv: nn.Module, groups: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A MaskedConv2d -> per output group (W (m × n) over the kept taps only, bias (m,))."""
    from arkern.decode.incremental import masked_conv_mask

    mask = masked_conv_mask(conv).to(conv.weight.device)
    w = conv.weight.detach().to(dtype) * mask.to(dtype)
    cout, cin, kh, kw = w.shape
    r, c = kh // 2, kw // 2
    cols = w[:, :, :r + 1].permute(0, 2, 3, 1).reshape(cout, -1)  # taps (row, column, channel)
    kept = mask[:, :, :r + 1].permute(0, 2, 3, 1).reshape(cout, -1)
    bias = conv.bias.detach().to(dtype) if conv.bias is not None else w.new_zeros(cout)
    m, cg = cout // groups, cin // groups
    out = []
    for g in range(groups):
        n = r * kw * cin + c * cin + (g if conv.mask_type == "A" else g + 1) * cg
        if kept[g * m:(g + 1) * m, n:].any() or not kept[g * m:(g + 1) * m, :n].all():
            raise ValueError(f"pack_pixelcnn: {conv} has a non-standard mask")
        out.append((cols[g * m:(g + 1) * m, :n], bias[g * m:(g + 1) * m]))
    return out


def _full_matrix(conv: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain conv (all taps kept) -> (W (cout × kh·kw·cin) in tap order, bias)."""
    w = conv.weight.detach().to(dtype)
    bias = conv.bias.detach().to(dtype) if conv.bias is not None else w.new_zeros(w.shape[0])
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), bias


@torch.no_grad()
def _pack(model: nn.Module, weight_dtype: torch.dtype) -> PixelCNNFused:
    reasons = unsupported_reasons(model)
    if reasons:
        raise TypeError(f"pack_pixelcnn: cannot pack {type(model).__name__}: " + "; ".join(reasons))
    dtype = next(model.parameters()).dtype
    if weight_dtype not in (dtype, torch.bfloat16) or (weight_dtype == torch.bfloat16 and dtype != torch.float32):
        raise TypeError(f"pack_pixelcnn: weight_dtype must be the model dtype ({dtype}) or bfloat16 for a float32 "
                        f"model, got {weight_dtype}")
    c, k = model.image_channels, model.num_classes
    mats: list[tuple[torch.Tensor, torch.Tensor]] = []
    if hasattr(model, "v_convs"):  # GatedPixelCNN
        h, depth = model.hidden_channels, model.num_layers
        kh_a, kw_a = model.v_convs[0].kernel_size
        kh_b, kw_b = model.h_convs[0].kernel_size
        for layer in range(depth):
            mats += [_full_matrix(model.v_convs[layer], dtype), _full_matrix(model.links[layer], dtype)]
            mats += _masked_matrices(model.h_convs[layer], c, dtype)
            mats += _masked_matrices(model.h_outs[layer], c, dtype)
        head = [model.head[1], model.head[3]]
        kind = 1
    else:  # PixelCNN
        layers = list(model.net)
        blocks = [m.body for m in layers[1:-4]]
        h, depth = layers[0].out_channels, len(blocks)
        kh_a, kw_a = layers[0].kernel_size
        kh_b, kw_b = blocks[0][1].kernel_size if blocks else (1, 1)
        mats += _masked_matrices(layers[0], c, dtype)
        for body in blocks:
            mats += _masked_matrices(body[1], c, dtype) + _masked_matrices(body[3], c, dtype)
        head = [layers[-3], layers[-1]]
        kind = 0
    mats += _masked_matrices(head[0], c, dtype) + _masked_matrices(head[1], c, dtype)
    config = [kind, c, k, h, depth, kh_a, kw_a, kh_b, kw_b]
    assert [tuple(w.shape) for w, _ in mats] == matrix_shapes(config)
    return PixelCNNFused(config=config, weights=[tile_matrix(w, weight_dtype) for w, _ in mats],
                         biases=[F.pad(b, (0, _pad16(b.shape[0]) - b.shape[0])).contiguous() for _, b in mats],
                         dtype=dtype)

# ------------------------------------------------------------------------------------------ support


def _is_masked(m: nn.Module, kernel: tuple[int, int] | None, mask_type: str, groups: int) -> bool:
    from arkern.nn import MaskedConv2d

    return (isinstance(m, MaskedConv2d) and tuple(m.dilation) == (1, 1) and m.color_groups == groups
            and m.mask_type == mask_type and (kernel is None or tuple(m.kernel_size) == kernel))


def _head_reasons(layers: list[nn.Module], h: int, c: int, k: int) -> list[str]:
    ok = (len(layers) == 4 and type(layers[0]) is nn.ReLU and type(layers[2]) is nn.ReLU
          and _is_masked(layers[1], (1, 1), "B", c) and _is_masked(layers[3], (1, 1), "B", c)
          and (layers[1].in_channels, layers[1].out_channels, layers[3].out_channels) == (h, h, c * k))
    return [] if ok else ["the head is not ReLU, 1x1 mask-B conv, ReLU, 1x1 mask-B conv (h -> C*K)"]


def unsupported_reasons(model: nn.Module) -> list[str]:
    """Why the fused kernel cannot sample `model` (empty when it can): readable, one reason per item.

    Supported: :class:`arkern.models.PixelCNN` and :class:`arkern.models.GatedPixelCNN` as their
    constructors build them (any sizes, colour groups, kernel sizes, class conditioning), with float32 or
    float64 parameters on the CPU, and an unchanged ``output_map``.
    """
    from arkern.decode.incremental import DownShift, Gate, Residual
    from arkern.models.gated_pixelcnn import GatedPixelCNN
    from arkern.models.pixelcnn import PixelCNN
    from arkern.nn import ShiftedConv2d

    name = type(model).__name__
    if not isinstance(model, (PixelCNN, GatedPixelCNN)):
        return [f"fused sampling supports PixelCNN and GatedPixelCNN, not {name} (use method='cached')"]
    base = PixelCNN if isinstance(model, PixelCNN) else GatedPixelCNN
    reasons = []
    if type(model).output_map is not base.output_map:
        reasons.append(f"{name} overrides output_map, which the fused kernel cannot follow")
    params = list(model.parameters())
    dtypes = {p.dtype for p in params}
    if dtypes - {torch.float32, torch.float64} or len(dtypes) != 1:
        reasons.append(f"parameters must all be float32 or all float64, got {sorted(map(str, dtypes))}")
    if any(p.device.type != "cpu" for p in params):
        reasons.append("the fused kernel runs on the CPU only")
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        reasons.append("forward hooks are not run by the fused kernel")
    c, k = model.image_channels, model.num_classes
    if base is PixelCNN:
        layers = list(model.net)
        if len(layers) < 5 or not _is_masked(layers[0], None, "A", c) or layers[0].in_channels != c:
            return reasons + ["net[0] must be a mask-A MaskedConv2d on the image"]
        h = layers[0].out_channels
        kernel = None
        for n, m in enumerate(layers[1:-4], 1):
            body = list(m.body) if isinstance(m, Residual) and isinstance(m.body, nn.Sequential) else []
            kernel = kernel or (tuple(body[1].kernel_size) if len(body) == 4 else None)
            if not (len(body) == 4 and type(body[0]) is nn.ReLU and type(body[2]) is nn.ReLU
                    and _is_masked(body[1], kernel, "B", c) and _is_masked(body[3], (1, 1), "B", c)
                    and body[1].in_channels == body[1].out_channels == body[3].out_channels == h):
                reasons.append(f"net[{n}] is not a residual block ReLU, kxk mask-B conv, ReLU, 1x1 mask-B conv "
                               "(the same k in every block)")
        return reasons + _head_reasons(layers[-4:], h, c, k)
    h, depth = model.hidden_channels, model.num_layers
    if not (isinstance(model.v_gate, Gate) and model.v_gate.groups == 1 and isinstance(model.h_gate, Gate)
            and model.h_gate.groups == c and isinstance(model.down, DownShift)):
        reasons.append("the gates / down shift are not Gate(1), Gate(C), DownShift")
    v0, h0 = model.v_convs[0], model.h_convs[0]
    for layer in range(depth):
        v, hc, link, out = model.v_convs[layer], model.h_convs[layer], model.links[layer], model.h_outs[layer]
        cin = c if layer == 0 else h
        if not (isinstance(v, ShiftedConv2d) and v.shift == "down" and tuple(v.stride) == (1, 1)
                and tuple(v.kernel_size) == tuple(v0.kernel_size) and (v.in_channels, v.out_channels) == (cin, 2 * h)):
            reasons.append(f"v_convs[{layer}] is not a stride-1 'down' ShiftedConv2d {cin} -> {2 * h}")
        if not (_is_masked(hc, tuple(h0.kernel_size), "A" if layer == 0 else "B", c) and hc.kernel_size[0] == 1
                and (hc.in_channels, hc.out_channels) == (cin, 2 * h)):
            reasons.append(f"h_convs[{layer}] is not a (1, k) MaskedConv2d {cin} -> {2 * h}")
        if not (type(link) is nn.Conv2d and tuple(link.kernel_size) == (1, 1) and tuple(link.stride) == (1, 1)
                and link.groups == 1 and tuple(link.padding) == (0, 0)
                and link.in_channels == link.out_channels == 2 * h):
            reasons.append(f"links[{layer}] is not a plain 1x1 nn.Conv2d {2 * h} -> {2 * h}")
        if not (_is_masked(out, (1, 1), "B", c) and out.in_channels == out.out_channels == h):
            reasons.append(f"h_outs[{layer}] is not a 1x1 mask-B MaskedConv2d {h} -> {h}")
    return reasons + _head_reasons(list(model.head), h, c, k)




def pack_pixelcnn(model: nn.Module, weight_dtype: torch.dtype | None = None) -> PixelCNNFused:
    """Pack a PixelCNN / GatedPixelCNN for the fused kernel, re-packing only when a parameter changed.

    weight_dtype: the model's dtype (default) or torch.bfloat16 (float32 models; accumulation stays
    float32, so outputs differ from the model's by bfloat16 rounding of the weights).
    """
    weight_dtype = weight_dtype or next(model.parameters()).dtype
    return cached_pack(model, ("pixelcnn", weight_dtype), lambda: _pack(model, weight_dtype))


def condition_bias(model: nn.Module, packed: PixelCNNFused, condition: torch.Tensor | None) -> torch.Tensor | None:
    """GatedPixelCNN class conditioning -> (N, L, 2h) per-layer pre-activation bias (None if unconditional)."""
    if packed.config[0] != 1 or getattr(model, "embedding", None) is None:
        return None
    with torch.no_grad():
        return torch.stack(model.layer_bias(condition), dim=1).to(packed.dtype).contiguous()


# ---------------------------------------------------------------------------------------- reference


def _reference(config, weights, biases, caches, image, noise, cond, row_begin, row_end, temperature, top_k,
               top_p, return_logits, forced):
    """The op in plain PyTorch over the packed tensors, all batch rows at once (same semantics as C++)."""
    from arkern.sampling import sample_categorical

    kind, C, K, h, depth, kh_a, kw_a, kh_b, kw_b = config
    B, _, H, W = image.shape
    dt = biases[0].dtype
    mats = [(untile_matrix(w, m, n).to(dt), b[:m]) for w, b, (m, n) in zip(weights, biases, matrix_shapes(config))]
    hg = h // C
    if row_begin == 0:
        for c in caches:
            c.zero_()

    def lin(idx: int, x: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, m)
        w, b = mats[idx]
        return x[:, :w.shape[1]] @ w.t() + b

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
    hin1, hin2 = torch.zeros(B, h, dtype=dt), torch.zeros(B, h, dtype=dt)
    links = torch.zeros(B, depth, W, 2 * h, dtype=dt)
    logits = image.new_zeros(0, dtype=dt)
    if return_logits:
        logits = torch.zeros(B, row_end - row_begin, W, C * K, dtype=dt)
    for i in range(row_begin, row_end):
        if kind == 1:  # vertical stack on row i - 1 -> link rows of row i
            for layer in range(depth):
                if i == 0:
                    links[:, layer] = mats[gx(layer, 1)][1]
                    continue
                for j in range(W):
                    v_pre = lin(gx(layer, 0), taps(caches[2 * layer], i - kh_a, kh_a, j, kw_a, 0))
                    if cond is not None:
                        v_pre = v_pre + cond[:, layer]
                    links[:, layer, j] = lin(gx(layer, 1), v_pre)
                    if layer + 1 < depth:
                        caches[2 * layer + 2][:, (i - 1) % kh_a, j + kw_a // 2] = gate(v_pre, h)
        for j in range(W):
            for g in range(C):
                sl = slice(g * hg, (g + 1) * hg)
                if kind == 0:
                    ra, rb = kh_a // 2, kh_b // 2
                    x[:, sl] = lin(g, taps(caches[0], i - ra, ra, j, kw_a, (kw_a // 2) * C + g))
                    for blk in range(depth):
                        caches[1 + blk][:, i % (rb + 1), j + kw_b // 2, sl] = torch.relu(x[:, sl])
                        t = lin((1 + 2 * blk) * C + g, taps(caches[1 + blk], i - rb, rb, j, kw_b,
                                                            (kw_b // 2) * h + (g + 1) * hg))
                        act[:, blk, sl] = torch.relu(t)
                        x[:, sl] += lin((2 + 2 * blk) * C + g, act[:, blk])
                else:
                    for layer in range(depth):
                        cin = C if layer == 0 else h
                        if layer:
                            caches[2 * layer + 1][:, 0, j + kw_b // 2, sl] = x[:, sl]
                        pre = lin(gx(layer, 2 + g), taps(caches[2 * layer + 1], i, 0, j, kw_b,
                                                         (kw_b // 2) * cin + (g if layer == 0 else g + 1) * (cin // C)))
                        pre = pre + links[:, layer, j, 2 * g * hg:2 * (g + 1) * hg]
                        if cond is not None:
                            pre = pre + cond[:, layer, 2 * g * hg:2 * (g + 1) * hg]
                        act[:, layer, sl] = gate(pre, hg)
                        out = lin(gx(layer, 2 + C + g), act[:, layer])
                        x[:, sl] = out if layer == 0 else x[:, sl] + out
                n_mats = len(mats)
                hin1[:, sl] = torch.relu(x[:, sl])
                hin2[:, sl] = torch.relu(lin(n_mats - 2 * C + g, hin1))
                lg = lin(n_mats - C + g, hin2)
                if forced is not None:
                    v = forced[:, g, i, j]
                else:
                    v = sample_categorical(lg, noise[:, g, i, j], temperature=temperature, top_k=top_k or None,
                                           top_p=top_p if top_p < 1 else None)
                image[:, g, i, j] = v
                if return_logits:
                    logits[:, i - row_begin, j, g * K:(g + 1) * K] = lg
                xv = v.to(dt) * (2.0 / (K - 1)) - 1.0
                caches[0][:, i % caches[0].shape[1], j + kw_a // 2, g] = xv
                if kind == 1:
                    caches[1][:, 0, j + kw_b // 2, g] = xv
    return logits


# --------------------------------------------------------------------------------------- the op face

BACKENDS = OpBackends(OP)
BACKENDS.register("reference", _reference, (torch.float32, torch.bfloat16, torch.float64))
BACKENDS.register("cpu", lambda *args: torch.ops.arkern.pixelcnn_generate(*args),
                  (torch.float32, torch.bfloat16, torch.float64), torch_op="arkern::pixelcnn_generate")


def validate(packed: PixelCNNFused, caches: list[torch.Tensor], image: torch.Tensor, noise: torch.Tensor,
             cond: torch.Tensor | None, row_begin: int, row_end: int, temperature: float, top_k: int | None,
             top_p: float | None, forced: torch.Tensor | None) -> None:
    """Check a pixelcnn_generate call; raises ValueError / TypeError naming the argument."""
    C, K, h, depth = packed.config[1], packed.config[2], packed.config[3], packed.config[4]
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != C:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{OP}: image must be (B, {C}, H, W), got {got}")
    if image.dtype != torch.int64 or not image.is_contiguous():
        raise TypeError(f"{OP}: image must be a contiguous int64 tensor, got {image.dtype}")
    B, _, H, W = image.shape
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != tuple(image.shape):
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"{OP}: noise must have the image's shape {tuple(image.shape)}, got {got}")
    if noise.dtype != torch.float64:
        raise TypeError(f"{OP}: noise must be float64 uniforms, got {noise.dtype}")
    specs = cache_specs(packed.config)
    if len(caches) != len(specs):
        raise ValueError(f"{OP}: expected {len(specs)} caches (PixelCNNFused.new_caches), got {len(caches)}")
    for n, (c, (rows, pad, cin)) in enumerate(zip(caches, specs)):
        if c.dtype != packed.dtype or tuple(c.shape) != (B, rows, W + 2 * pad, cin) or not c.is_contiguous():
            raise ValueError(f"{OP}: caches[{n}] must be contiguous {packed.dtype} {(B, rows, W + 2 * pad, cin)}, "
                             f"got {c.dtype} {tuple(c.shape)}")
    if not (isinstance(row_begin, int) and isinstance(row_end, int) and 0 <= row_begin <= row_end <= H):
        raise ValueError(f"{OP}: rows [{row_begin}, {row_end}) must lie in [0, {H}]")
    check_warpers(temperature, top_k, top_p, OP)
    if cond is not None and (packed.config[0] != 1 or cond.dtype != packed.dtype
                             or tuple(cond.shape) != (B, depth, 2 * h)):
        raise ValueError(f"{OP}: cond must be {packed.dtype} ({B}, {depth}, {2 * h}) for a conditional "
                         f"GatedPixelCNN, got {cond.dtype} {tuple(cond.shape)}")
    if forced is not None:
        if forced.dtype != torch.int64 or tuple(forced.shape) != tuple(image.shape):
            raise ValueError(f"{OP}: forced must be int64 {tuple(image.shape)}, got {forced.dtype} "
                             f"{tuple(forced.shape)}")
        if forced.numel() and (int(forced.min()) < 0 or int(forced.max()) >= K):
            raise ValueError(f"{OP}: forced holds levels outside [0, {K})")


def pixelcnn_generate(packed: PixelCNNFused, caches: list[torch.Tensor], image: torch.Tensor, noise: torch.Tensor,
                      *, cond: torch.Tensor | None = None, row_begin: int = 0, row_end: int | None = None,
                      temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                      return_logits: bool = False, forced: torch.Tensor | None = None,
                      backend: str | None = None) -> torch.Tensor:
    """Sample image rows [row_begin, row_end) in place (row_begin == 0 clears the caches).

    Args:
        packed: from :func:`pack_pixelcnn`.
        caches: from ``packed.new_caches(B, H, W)``, carried from one call to the next (mutated).
        image: (B, C, H, W) int64, receives the drawn levels of the rows run (mutated).
        noise: (B, C, H, W) float64 uniforms in [0, 1); sub-step g of pixel (i, j) uses noise[:, g, i, j].
        cond: (B, L, 2h) per-layer conditioning bias (:func:`condition_bias`) of a conditional GatedPixelCNN.
        temperature, top_k, top_p: warpers (see :func:`arkern.sampling.sample_categorical`).
        return_logits: also return the logits of every sub-step.
        forced: (B, C, H, W) int64 levels fed instead of drawn ones (teacher forcing).
        backend: "cpu", "reference" or None.

    Returns:
        (B, rows, W, C*K) logits in the activation dtype (channel g's from sub-step g), or an empty tensor.
    """
    row_end = image.shape[2] if row_end is None else row_end
    validate(packed, caches, image, noise, cond, row_begin, row_end, temperature, top_k, top_p, forced)
    kernel = BACKENDS.select(backend, image.device, packed.weight_dtype)
    return kernel.fn(list(packed.config), list(packed.weights), list(packed.biases), list(caches), image, noise,
                     cond, row_begin, row_end, float(temperature), int(top_k or 0),
                     float(top_p if top_p is not None else 1.0), bool(return_logits), forced)


def matrix_elements(packed: PixelCNNFused) -> int:
    """Packed matrix elements, padding included (multiply-adds per pixel of a grey image, roughly)."""
    return sum(w.numel() for w in packed.weights)


__all__ = ["PixelCNNFused", "pack_pixelcnn", "pixelcnn_generate", "condition_bias", "unsupported_reasons", "BACKENDS"]
