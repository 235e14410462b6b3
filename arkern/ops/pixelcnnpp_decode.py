"""pixelcnnpp_decode: fused PixelCNN++ image sampling, ``torch.ops.arkern.pixelcnnpp_generate``.

One call samples whole images in C++ (csrc/cpu/pixelcnnpp_decode.cpp) on the schedule of the cached
decoder (:class:`arkern.models.pixelcnnpp.PixelCNNppDecoder`): the ``u`` stream once per image row for
all columns, the ``ul`` stream once per pixel, each stride-2 layer only where it produces a new output,
then the output conv and the discretized logistic mixture draw (float64, the decisions of
:func:`arkern.distributions.sample_discretized_logistic_mixture`) for every pixel.

:func:`pack_pixelcnnpp` packs a float32 model into :class:`PixelCNNppFused`: one matrix per conv (columns
ordered kernel row, kernel column, input channel), one per tap of each transposed conv plus its bias
alone, tiled as :func:`arkern.ops.pixelcnn_decode.tile_matrix` lays them out; biases padded to 16.

Backends: "cpu" only. The reference this kernel is tested against is the model itself (naive sampling
and the cached decoder, tests/test_pixelcnnpp_fused.py). Decode op: no autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arkern.backends import OpBackends
from arkern.distributions import mixture_params_size
from arkern.ops._library import LIB
from arkern.ops._validate import check_warpers
from arkern.ops.pixelcnn_decode import tile_matrix

OP = "pixelcnnpp_generate"

LIB.define("pixelcnnpp_generate(int[] config, Tensor[] weights, Tensor[] biases, Tensor(a!) image, Tensor noise, "
           "float temperature, bool return_params, Tensor? forced) -> Tensor")


def _params_size(config) -> int:
    return mixture_params_size(config[0], config[1])


@torch.library.register_fake("arkern::pixelcnnpp_generate")
def _fake(config, weights, biases, image, noise, temperature, return_params, forced):
    b, _, h, w = image.shape
    return biases[0].new_empty((b, h, w, _params_size(config)) if return_params else (0,))


@dataclass(frozen=True)
class PixelCNNppFused:
    """A PixelCNN++ packed for the fused sampler.

    config: [C, M, bins, f, R] (image channels, mixture components, levels, filters, resnets per scale).
    weights / biases: the tiled float32 matrices and their padded biases, in the kernel's order.
    """

    config: tuple[int, ...]
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]


def _pad16(n: int) -> int:
    return (n + 15) // 16 * 16


class _Packer:
    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []

    def add(self, w: torch.Tensor, b: torch.Tensor | None) -> None:
        """W (m × n) and its bias (m,) or None (zeros)."""
        m = w.shape[0]
        bias = torch.zeros(m) if b is None else b.detach().float()
        self.weights.append(tile_matrix(w.detach().float(), torch.float32) if w.shape[1] else torch.zeros(0))
        self.biases.append(F.pad(bias, (0, _pad16(m) - m)).contiguous())

    def conv(self, layer: nn.Module) -> None:
        """A (shifted) conv, weight (Cout, Cin, kH, kW) -> columns (kH, kW, Cin)."""
        w = layer.weight
        self.add(w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), layer.bias)

    def block(self, blk: nn.Module) -> None:
        self.conv(blk.conv_in)
        if blk.nin_aux is not None:
            self.conv(blk.nin_aux)
        self.conv(blk.conv_out)

    def transpose(self, layer: nn.Module) -> None:
        """A transposed conv, weight (Cin, Cout, kH, kW): one (Cout × Cin) matrix per tap, then its bias."""
        w = layer.weight
        for kh in range(w.shape[2]):
            for kw in range(w.shape[3]):
                self.add(w[:, :, kh, kw].t(), None)
        self.add(w.new_zeros(w.shape[1], 0), layer.bias)


def unsupported_reasons(model: nn.Module) -> list[str]:
    """Why the fused kernel cannot sample `model` (empty when it can), one readable reason per item.

    Supported: :class:`arkern.models.PixelCNNpp` as its constructor builds it (grey or RGB, any filters,
    resnets, up to 64 mixture components), float32 parameters on the CPU, unchanged ``output_map``.
    """
    from arkern.models.pixelcnnpp import PixelCNNpp

    if not isinstance(model, PixelCNNpp):
        return [f"the fused PixelCNN++ sampler needs a PixelCNNpp, not {type(model).__name__}"]
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


def pack_pixelcnnpp(model: nn.Module) -> PixelCNNppFused:
    """Pack a float32 :class:`arkern.models.PixelCNNpp` for :func:`pixelcnnpp_generate`."""
    reasons = unsupported_reasons(model)
    if reasons:
        raise ValueError("pack_pixelcnnpp: " + "; ".join(reasons))
    m = model
    p = _Packer()
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
    config = (m.image_channels, m.num_mixtures, m.num_classes, m.u_init.out_channels, len(m.up_u[0]))
    return PixelCNNppFused(config, tuple(p.weights), tuple(p.biases))


def validate(packed: PixelCNNppFused, image: torch.Tensor, noise: torch.Tensor, temperature: float,
             forced: torch.Tensor | None) -> None:
    """Raise a clear error for inputs the kernel cannot run (names the argument)."""
    c, _, bins = packed.config[:3]
    if image.dtype != torch.int64 or image.dim() != 4 or image.shape[1] != c or not image.is_contiguous():
        raise ValueError(f"pixelcnnpp_generate: image must be a contiguous int64 (N, {c}, H, W) tensor, got "
                         f"{image.dtype} {tuple(image.shape)}")
    n, _, h, w = image.shape
    if h < 4 or w < 4 or h % 4 or w % 4:
        raise ValueError(f"pixelcnnpp_generate: image height and width must be positive multiples of 4, got {h}x{w}")
    if noise.dtype != torch.float64 or tuple(noise.shape) != (n, 1 + c, h, w):
        raise ValueError(f"pixelcnnpp_generate: noise must be float64 of shape {(n, 1 + c, h, w)}, got "
                         f"{noise.dtype} {tuple(noise.shape)}")
    check_warpers(temperature, None, None, OP)
    if forced is not None:
        if forced.dtype != torch.int64 or forced.shape != image.shape:
            raise ValueError(f"pixelcnnpp_generate: forced must be int64 of shape {tuple(image.shape)}")
        if forced.numel() and (int(forced.min()) < 0 or int(forced.max()) >= bins):
            raise ValueError(f"pixelcnnpp_generate: forced levels must be in [0, {bins})")
    if image.device.type != "cpu" or noise.device.type != "cpu":
        raise ValueError("pixelcnnpp_generate: image and noise must be CPU tensors")


BACKENDS = OpBackends(OP)
BACKENDS.register("cpu", lambda *args: torch.ops.arkern.pixelcnnpp_generate(*args), (torch.float32,),
                  torch_op="arkern::pixelcnnpp_generate")


def pixelcnnpp_generate(packed: PixelCNNppFused, image: torch.Tensor, noise: torch.Tensor, *,
                        temperature: float = 1.0, return_params: bool = False, forced: torch.Tensor | None = None,
                        backend: str | None = None) -> torch.Tensor:
    """Sample whole images in place.

    Args:
        packed: from :func:`pack_pixelcnnpp`.
        image: (N, C, H, W) int64, receives the drawn levels (mutated).
        noise: (N, 1 + C, H, W) float64 uniforms: noise[:, 0] picks the mixture component of each pixel,
            noise[:, 1 + c] is channel c's logistic draw.
        temperature: scales the logistic scales (> 0).
        return_params: also return the mixture parameters of every pixel.
        forced: (N, C, H, W) int64 levels fed instead of drawn ones (teacher forcing).
        backend: "cpu" or None.

    Returns:
        (N, H, W, P) float32 mixture parameters (P = 10·M for RGB), or an empty tensor.
    """
    validate(packed, image, noise, temperature, forced)
    kernel = BACKENDS.select(backend, image.device, torch.float32)
    return kernel.fn(list(packed.config), list(packed.weights), list(packed.biases), image, noise.contiguous(),
                     float(temperature), bool(return_params), None if forced is None else forced.contiguous())


__all__ = ["PixelCNNppFused", "pack_pixelcnnpp", "pixelcnnpp_generate", "unsupported_reasons", "BACKENDS"]
