"""How a PixelCNN++ packs its weights for the fused sampler (``arkern.ops.pixelcnnpp_generate``), and the
checks that the kernel can run it (:func:`pixelcnnpp_fused_reasons`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arkern.backends import cpu_isas
from arkern.models._packcache import cached_pack
from arkern.models.pixelcnnpp import PixelCNNpp
from arkern.ops.pixelcnn_decode import pad16, tile_matrix
from arkern.ops.pixelcnnpp_decode import PixelCNNppFused, PixelCNNppLayout, pack_tiles, tile_groups

__all__ = ["pack_pixelcnnpp", "pixelcnnpp_fused_reasons"]


class _Packer:
    def __init__(self, weight_dtype: torch.dtype, tiles: bool) -> None:
        self.weight_dtype = weight_dtype
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self.tiles: list[torch.Tensor] | None = [] if tiles else None

    def add(self, w: torch.Tensor, b: torch.Tensor | None, halves: int = 0) -> None:
        """W (m × n) and its bias (m,) or None (zeros); halves: its AMX copy's column groups (tile_groups)."""
        m = w.shape[0]
        w = w.detach().float()
        bias = torch.zeros(m) if b is None else b.detach().float()
        self.weights.append(tile_matrix(w, self.weight_dtype) if w.shape[1]
                            else torch.zeros(0, dtype=self.weight_dtype))
        self.biases.append(F.pad(bias, (0, pad16(m) - m)).contiguous())
        if self.tiles is not None:
            self.tiles.append(pack_tiles(w, tile_groups(w.shape[1], halves)))

    def conv(self, layer: nn.Module, halves: int = 0) -> None:
        """A (shifted) conv, weight (Cout, Cin, kH, kW) -> columns (kH, kW, Cin); a (2, 2) conv's AMX copy in
        halves (the kernel splits its products by kernel row)."""
        w = layer.weight
        split = tuple(w.shape[2:]) == (2, 2)
        self.add(w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), layer.bias, 1 if split else halves)

    def block(self, blk: nn.Module) -> None:
        self.conv(blk.conv_in)
        if blk.nin_aux is not None:  # a two-part nin (u and ul) is split into its parts' columns
            self.conv(blk.nin_aux, 2 if blk.nin_aux.weight.shape[1] == 2 * blk.conv_in.weight.shape[1] else 0)
        self.conv(blk.conv_out)

    def transpose(self, layer: nn.Module) -> None:
        """A transposed conv, weight (Cin, Cout, kH, kW): one (Cout × Cin) matrix per tap, then its bias."""
        w = layer.weight
        for kh in range(w.shape[2]):
            for kw in range(w.shape[3]):
                self.add(w[:, :, kh, kw].t(), None)
        self.add(w.new_zeros(w.shape[1], 0), layer.bias)


def pixelcnnpp_fused_reasons(model: PixelCNNpp) -> list[str]:
    """Why the fused kernel cannot sample `model` (empty when it can), one readable reason per item.

    Supported: :class:`arkern.models.PixelCNNpp` as its constructor builds it (grey or RGB, any filters,
    resnets, up to 64 mixture components), float32 parameters on the CPU, unchanged ``output_map``.
    """
    reasons = []
    if type(model).output_map is not PixelCNNpp.output_map:
        reasons.append(f"{type(model).__name__} overrides output_map, which the fused kernel cannot follow")
    params = list(model.parameters())
    if any(p.dtype != torch.float32 for p in params):
        reasons.append("the fused PixelCNN++ kernel needs float32 parameters")
    if any(p.device.type != "cpu" for p in params):
        reasons.append("the fused kernel runs on the CPU only")
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        reasons.append("forward hooks are not run by the fused kernel")
    if model.image_channels not in (1, 3):
        reasons.append(f"image_channels must be 1 or 3, got {model.image_channels}")
    if model.num_mixtures > 64:
        reasons.append(f"at most 64 mixture components, got {model.num_mixtures}")
    kernels = {"u_init": (2, 3), "ul_init_down": (1, 3), "ul_init_right": (2, 1)}
    for name, k in kernels.items():
        if tuple(getattr(model, name).kernel_size) != k:
            reasons.append(f"{name} must have kernel {k} as PixelCNNpp builds it")
    return reasons


def _pack(model: PixelCNNpp, weight_dtype: torch.dtype) -> PixelCNNppFused:
    reasons = pixelcnnpp_fused_reasons(model)
    if reasons:
        raise ValueError("pack_pixelcnnpp: " + "; ".join(reasons))
    m = model
    p = _Packer(weight_dtype, tiles=weight_dtype == torch.bfloat16 and cpu_isas()["amx"] is None)
    with torch.no_grad():
        for layer in (m.u_init, m.ul_init_down, m.ul_init_right):
            p.conv(layer)
        for stream in (m.up_u, m.up_ul):
            for scale in range(3):
                for blk in stream[scale]:
                    p.block(blk)
        for layer in (*m.down_u, *m.down_ul):
            p.conv(layer)
        for stream in (m.dn_u, m.dn_ul):
            for scale in range(3):  # the kernel's scale s is the model's down-pass stage 2 - s
                for blk in stream[2 - scale]:
                    p.block(blk)
        for scale in range(2):  # up-sampling into scale s is the model's stage 1 - s
            p.transpose(m.up_sample_u[1 - scale])
            p.transpose(m.up_sample_ul[1 - scale])
        p.conv(m.out)
    layout = PixelCNNppLayout(m.image_channels, m.num_mixtures, m.num_classes, m.u_init.out_channels, len(m.up_u[0]))
    return PixelCNNppFused(layout, tuple(p.weights), tuple(p.biases), tuple(p.tiles or ()))


def pack_pixelcnnpp(model: PixelCNNpp, weight_dtype: torch.dtype | None = None) -> PixelCNNppFused:
    """Pack a float32 :class:`arkern.models.PixelCNNpp` for ``arkern.ops.pixelcnnpp_generate``, re-packing
    only when a parameter changed; raises ValueError listing why when the kernel cannot run the model.

    weight_dtype: torch.float32 (default) or torch.bfloat16: the bfloat16 precision (docs/design.md, "bfloat16
    precision"): every matrix rounded to bfloat16 here, every matrix input rounded to bfloat16 by the kernel,
    float32 sums; with AMX tile copies when this CPU has AMX (:func:`arkern.ops.pixelcnnpp_decode.pack_tiles`).
    """
    weight_dtype = weight_dtype or torch.float32
    if weight_dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"pack_pixelcnnpp: weight_dtype must be torch.float32 or torch.bfloat16, got {weight_dtype}")
    return cached_pack(model, ("pixelcnnpp", weight_dtype), lambda: _pack(model, weight_dtype))
