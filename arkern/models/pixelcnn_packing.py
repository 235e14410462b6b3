"""How PixelCNN and Gated PixelCNN pack their weights for the fused sampler (``arkern.ops.pixelcnn_generate``).

The op takes tensors only (:class:`arkern.ops.pixelcnn_decode.PixelCNNFused`); the models know their own
layers, so the packing lives here, with the checks that a model is built the way the kernel computes it
(``*_fused_reasons``: readable reasons, empty when the kernel can run the model). Packed weights are cached
per model and re-packed only when a parameter changed (:func:`arkern.models._packcache.cached_pack`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arkern.backends import cpu_isas
from arkern.models._packcache import cached_pack
from arkern.models.gated_pixelcnn import GatedPixelCNN
from arkern.models.pixelcnn import PixelCNN
from arkern.nn import DownShift, Gate, MaskedConv2d, Residual, ShiftedConv2d, masked_conv_mask
from arkern.ops.pixelcnn_decode import PixelCNNFused, PixelCNNLayout, matrix_shapes, pack_tiles, pad16, tile_matrix

__all__ = ["pack_pixelcnn", "pack_gated_pixelcnn", "pixelcnn_fused_reasons", "gated_pixelcnn_fused_reasons",
           "condition_bias"]


def _masked_matrices(conv: nn.Module, groups: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A MaskedConv2d -> per output group (W (m × n) over the kept taps only, bias (m,))."""
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


def _check_packable(model: nn.Module, reasons: list[str], weight_dtype: torch.dtype) -> torch.dtype:
    """Raise if the fused op cannot follow `model` (`reasons`) or `weight_dtype` does not fit; else its dtype."""
    if reasons:
        raise TypeError(f"pack_pixelcnn: cannot pack {type(model).__name__}: " + "; ".join(reasons))
    dtype = next(model.parameters()).dtype
    if weight_dtype not in (dtype, torch.bfloat16) or (weight_dtype == torch.bfloat16 and dtype != torch.float32):
        raise TypeError(f"pack_pixelcnn: weight_dtype must be the model dtype ({dtype}) or bfloat16 for a float32 "
                        f"model, got {weight_dtype}")
    return dtype


def _input_table(model: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """(K, E): the first layer's input values of every level — the model's own ``prepare`` of each level
    (E = 1, the same values the naive and cached samplers feed), or its input embedding's rows."""
    embedding = getattr(model, "input_embedding", None)
    if embedding is not None:
        return embedding.weight.detach().to(dtype).contiguous()
    levels = torch.arange(model.num_classes, device=next(model.parameters()).device)
    return model.prepare(levels.reshape(-1, 1, 1, 1)).reshape(-1, 1).to(dtype).cpu().contiguous()


def _packed(model: nn.Module, layout: PixelCNNLayout, mats: list[tuple[torch.Tensor, torch.Tensor]],
            weight_dtype: torch.dtype, dtype: torch.dtype) -> PixelCNNFused:
    assert [tuple(w.shape) for w, _ in mats] == matrix_shapes(layout)
    packed = PixelCNNFused(layout=layout, weights=[tile_matrix(w, weight_dtype) for w, _ in mats],
                           biases=[F.pad(b, (0, pad16(b.shape[0]) - b.shape[0])).contiguous() for _, b in mats],
                           input_table=_input_table(model, dtype), dtype=dtype)
    if weight_dtype == torch.bfloat16 and cpu_isas()["amx"] is None:
        packed.tiles = pack_tiles(packed)
    return packed


@torch.no_grad()
def _pack_pixelcnn(model: PixelCNN, weight_dtype: torch.dtype) -> PixelCNNFused:
    dtype = _check_packable(model, pixelcnn_fused_reasons(model), weight_dtype)
    c, h = model.image_channels, model.net[0].out_channels
    layers = list(model.net)
    blocks = [m.body if model.residual else m for m in layers[1:-4]]
    kh_a, kw_a = layers[0].kernel_size
    kh_b, kw_b = blocks[0][1].kernel_size if blocks else (1, 1)
    mats = _masked_matrices(layers[0], c, dtype)
    for body in blocks:
        mats += _masked_matrices(body[1], c, dtype) + (_masked_matrices(body[3], c, dtype) if model.residual else [])
    mats += _masked_matrices(layers[-3], c, dtype) + _masked_matrices(layers[-1], c, dtype)
    layout = PixelCNNLayout(0, c, model.num_classes, h, len(blocks), kh_a, kw_a, kh_b, kw_b, input_width=1,
                            residual=int(model.residual), aligned=0, first_height=0, first_width=0, first_hwidth=0,
                            head_hidden=h, head_relu=1)
    return _packed(model, layout, mats, weight_dtype, dtype)


@torch.no_grad()
def _pack_gated(model: GatedPixelCNN, weight_dtype: torch.dtype) -> PixelCNNFused:
    dtype = _check_packable(model, gated_pixelcnn_fused_reasons(model), weight_dtype)
    c, k = model.image_channels, model.kwargs["kernel_size"]
    first, rest = model.v_convs[0], model.v_convs[1:]
    kh_a, kw_a = rest[0].kernel_size if len(rest) else (k // 2 + 1, k)
    kw_b = model.h_convs[1].kernel_size[1] if len(rest) else k
    head = list(model.head)[-3:]
    mats: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in range(model.num_layers):
        mats += [_full_matrix(model.v_convs[layer], dtype), _full_matrix(model.links[layer], dtype)]
        mats += _masked_matrices(model.h_convs[layer], c, dtype)
        mats += _masked_matrices(model.h_outs[layer], c, dtype)
    mats += _masked_matrices(head[0], c, dtype) + _masked_matrices(head[2], c, dtype)
    e = model.input_embedding.embedding_dim if model.input_embedding is not None else 1
    layout = PixelCNNLayout(1, c, model.num_classes, model.hidden_channels, model.num_layers, kh_a, kw_a, 1, kw_b,
                            input_width=e, residual=1, aligned=int(model.vertical_shift == "input"),
                            first_height=first.kernel_size[0], first_width=first.kernel_size[1],
                            first_hwidth=model.h_convs[0].kernel_size[1], head_hidden=head[0].out_channels,
                            head_relu=int(len(model.head) == 4))
    return _packed(model, layout, mats, weight_dtype, dtype)


def _is_masked(m: nn.Module, kernel: tuple[int, int] | None, mask_type: str, groups: int) -> bool:
    return (isinstance(m, MaskedConv2d) and tuple(m.dilation) == (1, 1) and m.color_groups == groups
            and m.mask_type == mask_type and (kernel is None or tuple(m.kernel_size) == kernel))


def _head_reasons(layers: list[nn.Module], h: int, c: int, k: int, *, any_width: bool = False) -> list[str]:
    """The head: [ReLU,] 1x1 mask-B conv h -> hh, ReLU, 1x1 mask-B conv hh -> C*K (hh = h unless `any_width`,
    the leading ReLU required unless `any_width`)."""
    if any_width and len(layers) == 3:
        layers = [nn.ReLU()] + layers
    ok = (len(layers) == 4 and type(layers[0]) is nn.ReLU and type(layers[2]) is nn.ReLU
          and _is_masked(layers[1], (1, 1), "B", c) and _is_masked(layers[3], (1, 1), "B", c)
          and layers[1].in_channels == h and layers[3].in_channels == layers[1].out_channels
          and layers[3].out_channels == c * k and (any_width or layers[1].out_channels == h))
    return [] if ok else ["the head is not ReLU, 1x1 mask-B conv, ReLU, 1x1 mask-B conv (h -> C*K)"]


def _common_reasons(model: nn.Module, base: type) -> list[str]:
    """What the kernel needs of any PixelCNN-family model: its own output_map, one float dtype, CPU, no hooks."""
    name = type(model).__name__
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
    return reasons


def pixelcnn_fused_reasons(model: PixelCNN) -> list[str]:
    """Why the fused kernel cannot sample this :class:`arkern.models.PixelCNN` (empty when it can).

    Supported: PixelCNN as its constructor builds it (any sizes, colour groups, kernel sizes), float32 or
    float64 parameters on the CPU, an unchanged ``output_map``.
    """
    reasons = _common_reasons(model, PixelCNN)
    c, k = model.image_channels, model.num_classes
    layers = list(model.net)
    if len(layers) < 5 or not _is_masked(layers[0], None, "A", c) or layers[0].in_channels != c:
        return reasons + ["net[0] must be a mask-A MaskedConv2d on the image"]
    h = layers[0].out_channels
    kernel = None
    for n, m in enumerate(layers[1:-4], 1):
        if not model.residual:
            body = list(m) if type(m) is nn.Sequential else []
            kernel = kernel or (tuple(body[1].kernel_size) if len(body) == 2 else None)
            if not (len(body) == 2 and type(body[0]) is nn.ReLU and _is_masked(body[1], kernel, "B", c)
                    and body[1].in_channels == body[1].out_channels == h):
                reasons.append(f"net[{n}] is not a plain block ReLU, kxk mask-B conv (the same k in every block)")
            continue
        body = list(m.body) if isinstance(m, Residual) and isinstance(m.body, nn.Sequential) else []
        kernel = kernel or (tuple(body[1].kernel_size) if len(body) == 4 else None)
        if not (len(body) == 4 and type(body[0]) is nn.ReLU and type(body[2]) is nn.ReLU
                and _is_masked(body[1], kernel, "B", c) and _is_masked(body[3], (1, 1), "B", c)
                and body[1].in_channels == body[1].out_channels == body[3].out_channels == h):
            reasons.append(f"net[{n}] is not a residual block ReLU, kxk mask-B conv, ReLU, 1x1 mask-B conv "
                           "(the same k in every block)")
    return reasons + _head_reasons(layers[-4:], h, c, k)


def gated_pixelcnn_fused_reasons(model: GatedPixelCNN) -> list[str]:
    """Why the fused kernel cannot sample this :class:`arkern.models.GatedPixelCNN` (empty when it can).

    Supported: GatedPixelCNN as its constructor builds it (any sizes, colour groups, kernel sizes, class
    conditioning, every option), float32 or float64 parameters on the CPU, an unchanged ``output_map``.
    """
    reasons = _common_reasons(model, GatedPixelCNN)
    c, k = model.image_channels, model.num_classes
    h, depth = model.hidden_channels, model.num_layers
    if not (isinstance(model.v_gate, Gate) and model.v_gate.groups == 1 and isinstance(model.h_gate, Gate)
            and model.h_gate.groups == c and isinstance(model.down, DownShift)):
        reasons.append("the gates / down shift are not Gate(1), Gate(C), DownShift")
    e = model.input_embedding.embedding_dim if model.input_embedding is not None else 1
    for layer in range(depth):
        v, hc, link, out = model.v_convs[layer], model.h_convs[layer], model.links[layer], model.h_outs[layer]
        cin = c * e if layer == 0 else h
        v_kernel = None if layer < 2 else tuple(model.v_convs[1].kernel_size)  # one kernel after the first layer
        h_kernel = None if layer < 2 else tuple(model.h_convs[1].kernel_size)
        if not (isinstance(v, ShiftedConv2d) and v.shift == "down" and tuple(v.stride) == (1, 1)
                and v_kernel in (None, tuple(v.kernel_size)) and (v.in_channels, v.out_channels) == (cin, 2 * h)):
            reasons.append(f"v_convs[{layer}] is not a stride-1 'down' ShiftedConv2d {cin} -> {2 * h}")
        if not (_is_masked(hc, h_kernel, "A" if layer == 0 else "B", c) and hc.kernel_size[0] == 1
                and hc.kernel_size[1] % 2 == 1 and (hc.in_channels, hc.out_channels) == (cin, 2 * h)):
            reasons.append(f"h_convs[{layer}] is not a (1, k) MaskedConv2d {cin} -> {2 * h}")
        if not (type(link) is nn.Conv2d and tuple(link.kernel_size) == (1, 1) and tuple(link.stride) == (1, 1)
                and link.groups == 1 and tuple(link.padding) == (0, 0)
                and link.in_channels == link.out_channels == 2 * h):
            reasons.append(f"links[{layer}] is not a plain 1x1 nn.Conv2d {2 * h} -> {2 * h}")
        if not (_is_masked(out, (1, 1), "B", c) and out.in_channels == out.out_channels == h):
            reasons.append(f"h_outs[{layer}] is not a 1x1 mask-B MaskedConv2d {h} -> {h}")
    return reasons + _head_reasons(list(model.head), h, c, k, any_width=True)


def pack_pixelcnn(model: PixelCNN, weight_dtype: torch.dtype | None = None) -> PixelCNNFused:
    """Pack a PixelCNN for the fused kernel, re-packing only when a parameter changed.

    weight_dtype: the model's dtype (default) or torch.bfloat16 (float32 models): the bfloat16 precision
    (docs/design.md), weights and every matrix input rounded to bfloat16, float32 sums; with AMX tile copies
    when this CPU has AMX (:func:`arkern.ops.pixelcnn_decode.pack_tiles`).
    """
    weight_dtype = weight_dtype or next(model.parameters()).dtype
    return cached_pack(model, ("pixelcnn", weight_dtype), lambda: _pack_pixelcnn(model, weight_dtype))


def pack_gated_pixelcnn(model: GatedPixelCNN, weight_dtype: torch.dtype | None = None) -> PixelCNNFused:
    """Pack a GatedPixelCNN for the fused kernel, re-packing only when a parameter changed (see
    :func:`pack_pixelcnn` for weight_dtype)."""
    weight_dtype = weight_dtype or next(model.parameters()).dtype
    return cached_pack(model, ("gated_pixelcnn", weight_dtype), lambda: _pack_gated(model, weight_dtype))


def condition_bias(model: GatedPixelCNN, packed: PixelCNNFused, condition: torch.Tensor | None
                   ) -> torch.Tensor | None:
    """GatedPixelCNN class conditioning -> (N, L, 2h) per-layer pre-activation bias (None if unconditional)."""
    if model.embedding is None:
        return None
    with torch.no_grad():
        return torch.stack(model.layer_bias(condition), dim=1).to(packed.dtype).contiguous()
