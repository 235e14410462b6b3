"""pixelcnnpp_decode: fused PixelCNN++ image sampling, ``torch.ops.arkern.pixelcnnpp_generate``.

One call samples whole images in C++ (csrc/cpu/pixelcnnpp_decode.cpp) on the schedule of the cached
decoder (:class:`arkern.models.pixelcnnpp.PixelCNNppDecoder`): the ``u`` stream once per image row for
all columns, the ``ul`` stream once per pixel, each stride-2 layer only where it produces a new output,
then the output conv and the discretized logistic mixture draw (float64, the decisions of
:func:`arkern.distributions.sample_discretized_logistic_mixture`) for every pixel. The ``ul`` stream's (2, 2)
convs are split by kernel row: the top row (the input row above) and the resnets' nin on the ``u`` stream are
computed once per row for all columns, the bottom row's two taps per pixel (as two halves that two threads
stream one each), so a pixel streams about half of the ``ul`` weights; each output is still summed in one
fixed order, whatever the thread count.

It takes the network as :class:`PixelCNNppFused` (packed by the model:
:func:`arkern.models.pixelcnnpp_packing.pack_pixelcnnpp`): one matrix per conv (columns ordered kernel
row, kernel column, input channel), one per tap of each transposed conv plus its bias alone, tiled as
:func:`arkern.ops.pixelcnn_decode.tile_matrix` lays them out; biases float32, padded to 16. The matrices are
all float32, or all bfloat16: the bfloat16 precision (docs/design.md), in which the input of every matrix
product is rounded to bfloat16 and the products are summed in float32 (the reference does the same). A
bfloat16 pack on a CPU with AMX also carries each matrix's AMX copy (:func:`pack_tiles`), on which the "cpu"
backend runs batches of 4 or more at the ``amx`` level (csrc/cpu/pixelcnnpp_amx.h).

Memory: besides the packed weights, the kernel keeps for each batch row only the rows its layers still read
(the last two input rows of every shifted conv, one row of each coarse scale's final down-pass values) and the
row parts of the ``ul`` convs for the current row, about 8 MB per image for the CIFAR-10 configuration (160
filters, 5 resnets, 32×32), independent of the height.

Backends: "cpu" and "reference" (:func:`arkern.reference.pixelcnnpp_decode.pixelcnnpp_generate`: the
network written out in plain PyTorch from the packed weights and sampled the naive way, one full forward
per pixel — the ground truth of the kernel and its benchmark baseline, far too slow to stand in for it).
Decode op: no autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arkern.backends import OpBackends
from arkern.distributions import check_warpers, mixture_params_size
from arkern.ops._library import LIB, same_device
from arkern.ops._validate import check_uniforms
from arkern.ops.amx_layout import pack_vnni
from arkern.reference import pixelcnnpp_decode as ref
from arkern.reference.pixelcnn_decode import pad16
from arkern.reference.pixelcnnpp_decode import PixelCNNppLayout

OP = "pixelcnnpp_generate"

LIB.define("pixelcnnpp_generate(int[] config, Tensor[] weights, Tensor[] biases, Tensor(a!) image, Tensor noise, "
           "float temperature, bool return_params, Tensor? forced, Tensor[] tiles) -> Tensor")


def _params_size(config) -> int:
    return mixture_params_size(config[0], config[1])


@torch.library.register_fake("arkern::pixelcnnpp_generate")
def _fake(config, weights, biases, image, noise, temperature, return_params, forced, tiles=()):
    same_device(OP, image=image, noise=noise, forced=forced, weight=weights[0])
    b, _, h, w = image.shape
    return biases[0].new_empty((b, h, w, _params_size(config)) if return_params else (0,))


@dataclass(frozen=True)
class PixelCNNppFused:
    """A PixelCNN++ packed for the fused sampler.

    layout: the architecture. weights / biases: the tiled matrices (all float32 or all bfloat16) and their
    padded float32 biases, in the kernel's order (the order :func:`arkern.models.pixelcnnpp_packing.pack_pixelcnnpp`
    adds them). tiles: empty, or for a bfloat16 pack on a CPU with AMX one AMX copy per matrix
    (:func:`pack_tiles`), used by the "cpu" backend at the ``amx`` level.
    """

    layout: PixelCNNppLayout
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    tiles: tuple[torch.Tensor, ...] = ()

    @property
    def weight_dtype(self) -> torch.dtype:
        """torch.float32, or torch.bfloat16 for the bfloat16 precision."""
        return self.weights[0].dtype


def tile_groups(n: int, halves: int) -> list[list[tuple[int, int]]]:
    """The column runs of a matrix's AMX copy (:func:`pack_tiles`) for a matrix of n columns: one group of all
    columns, or (`halves` = 1) a (2, 2) conv's top and bottom kernel rows, [0, n/2) and [n/2, n); (`halves` = 2)
    a two-part nin's ``u`` and ``ul`` columns, [0, n/4) + [n/2, 3n/4) and [n/4, n/2) + [3n/4, n) (each the
    columns its concat_elu input, [elu(v), elu(-v)], multiplies). No columns: no groups."""
    if n == 0:
        return []
    if halves == 1:
        return [[(0, n // 2)], [(n // 2, n)]]
    if halves == 2:
        q = n // 4
        return [[(0, q), (2 * q, 3 * q)], [(q, 2 * q), (3 * q, n)]]
    return [[(0, n)]]


def pack_tiles(w: torch.Tensor, groups: list[list[tuple[int, int]]]) -> torch.Tensor:
    """W (m × n) -> its AMX copy: for each group (:func:`tile_groups`) the VNNI tiles
    (:func:`arkern.ops.amx_layout.pack_vnni`) of its columns side by side, rows padded to ceil16(m); groups
    one after the other (empty for no groups)."""
    full = F.pad(w, (0, 0, 0, pad16(w.shape[0]) - w.shape[0]))
    parts = [pack_vnni(torch.cat([full[:, a:b] for a, b in g], dim=1)) for g in groups]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bfloat16)


def validate(packed: PixelCNNppFused, image: torch.Tensor, noise: torch.Tensor, temperature: float,
             forced: torch.Tensor | None) -> None:
    """Raise a clear error for inputs the kernel cannot run (names the argument)."""
    c, bins = packed.layout.channels, packed.layout.bins
    dtypes = {w.dtype for w in packed.weights}
    if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.bfloat16}:
        raise TypeError(f"pixelcnnpp_generate: packed.weights must be all float32 or all bfloat16, got "
                        f"{sorted(map(str, dtypes))}")
    if any(b.dtype != torch.float32 for b in packed.biases):
        raise TypeError("pixelcnnpp_generate: packed.biases must be float32")
    if packed.tiles and (len(packed.tiles) != len(packed.weights) or dtypes != {torch.bfloat16}):
        raise ValueError(f"pixelcnnpp_generate: packed.tiles must be empty or hold one AMX copy per matrix of a "
                         f"bfloat16 pack, got {len(packed.tiles)} for {len(packed.weights)} {sorted(map(str, dtypes))}")
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
        raise ValueError(f"pixelcnnpp_generate: image and noise must be CPU tensors, got image on {image.device}, "
                         f"noise on {noise.device}")
    check_uniforms(OP, noise, image.device)


BACKENDS = OpBackends(OP)
BACKENDS.register("reference", ref.pixelcnnpp_generate, (torch.float32, torch.bfloat16))
BACKENDS.register("cpu", lambda *args: torch.ops.arkern.pixelcnnpp_generate(*args), (torch.float32, torch.bfloat16),
                  torch_op="arkern::pixelcnnpp_generate")


def pixelcnnpp_generate(packed: PixelCNNppFused, image: torch.Tensor, noise: torch.Tensor, *,
                        temperature: float = 1.0, return_params: bool = False, forced: torch.Tensor | None = None,
                        backend: str | None = None) -> torch.Tensor:
    """Sample whole images in place.

    Args:
        packed: the network's packed weights (:class:`PixelCNNppFused`).
        image: (N, C, H, W) int64, receives the drawn levels (mutated).
        noise: (N, 1 + C, H, W) float64 uniforms: noise[:, 0] picks the mixture component of each pixel,
            noise[:, 1 + c] is channel c's logistic draw.
        temperature: scales the logistic scales (> 0).
        return_params: also return the mixture parameters of every pixel.
        forced: (N, C, H, W) int64 levels fed instead of drawn ones (teacher forcing).
        backend: "cpu", "reference" or None (the first eligible).

    Returns:
        (N, H, W, P) float32 mixture parameters (P = 10·M for RGB), or an empty tensor.
    """
    validate(packed, image, noise, temperature, forced)
    kernel = BACKENDS.select(backend, image.device, packed.weight_dtype)
    tiles = (list(packed.tiles),) if kernel.backend == "cpu" else ()  # its AMX copy (maybe empty)
    return kernel.fn(list(packed.layout), list(packed.weights), list(packed.biases), image, noise.contiguous(),
                     float(temperature), bool(return_params), None if forced is None else forced.contiguous(), *tiles)


__all__ = ["PixelCNNppFused", "PixelCNNppLayout", "pixelcnnpp_generate", "pack_tiles", "tile_groups", "BACKENDS"]
