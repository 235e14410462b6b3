"""pixelcnn_decode: fused PixelCNN / Gated PixelCNN image sampling, ``torch.ops.arkern.pixelcnn_generate``.

One call runs image rows [row_begin, row_end) of a batch, every pixel, colour sub-step, layer and draw,
without returning to Python. Colour sub-step g computes only output group g of every layer (the masks make
it depend on groups <= g only), so an RGB pixel costs one network pass, not three.

The op takes the network as packed tensors, :class:`PixelCNNFused`: a :class:`PixelCNNLayout` (the
architecture as 9 named ints) and one tiled matrix per (layer, output colour group) over the taps its mask
keeps (:func:`tile_matrix`; the layout is documented in :mod:`arkern.reference.pixelcnn_decode`), float32
(or bfloat16, accumulated in float32) or float64, with biases padded to 16. The models pack themselves
(:func:`arkern.models.pixelcnn_packing.pack_pixelcnn`); this op knows nothing of them.

Caches (:meth:`PixelCNNFused.new_caches`): per conv with a spatial kernel, (B, ring rows, W + 2·pad, Cin),
channel fastest; image row i lives in ring slot i % rows. They are the only state carried between calls.

Backends: "cpu" (csrc/cpu/pixelcnn_decode.cpp) and "reference"
(:func:`arkern.reference.pixelcnn_decode.pixelcnn_generate`, a readable PyTorch loop over the same packed
tensors and caches). Decode op: no autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from arkern.backends import OpBackends
from arkern.distributions import check_warpers
from arkern.ops._library import LIB, same_device
from arkern.ops._validate import check_uniforms
from arkern.ops.amx_layout import pack_vnni
from arkern.reference import pixelcnn_decode as ref
from arkern.reference.pixelcnn_decode import (
    TILE,
    PixelCNNLayout,
    bf16_order,
    cache_specs,
    matrix_shapes,
    pad16,
    tile_splits,
    untile_matrix,
)

OP = "pixelcnn_generate"

LIB.define("pixelcnn_generate(int[] config, Tensor[] weights, Tensor[] biases, Tensor input_table, "
           "Tensor(a!)[] caches, "
           "Tensor(b!) image, Tensor noise, Tensor? cond, int row_begin, int row_end, float temperature, "
           "int top_k, float top_p, bool return_logits, Tensor? forced, Tensor[] tiles) -> Tensor")


@torch.library.register_fake("arkern::pixelcnn_generate")
def _fake(config, weights, biases, input_table, caches, image, noise, cond, row_begin, row_end, temperature, top_k,
          top_p, return_logits, forced, tiles=()):
    same_device(OP, image=image, noise=noise, cond=cond, forced=forced, weight=weights[0], table=input_table,
                cache=caches[0] if caches else None)
    b, c, _, w = image.shape
    shape = (b, row_end - row_begin, w, c * config[2]) if return_logits else (0,)
    return biases[0].new_empty(shape)


def tile_matrix(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W (m × n) -> the kernel's flat tiled layout of ceil16(m) × n elements (zero rows appended)."""
    wp = F.pad(w, (0, 0, 0, pad16(w.shape[0]) - w.shape[0]))
    tiles = []
    for m0 in range(0, wp.shape[0], TILE):
        tile = wp[m0:m0 + TILE].t()  # (n, width): the weights of one input are contiguous
        if dtype == torch.bfloat16:
            tile = tile[:, bf16_order(tile.shape[1])]
        tiles.append(tile.reshape(-1))
    return torch.cat(tiles).to(dtype).contiguous()


@dataclass
class PixelCNNFused:
    """A model packed for :func:`pixelcnn_generate` (see the module docstring).

    layout: the architecture; weights / biases: one flat tensor per matrix in :func:`matrix_shapes` order;
    input_table: (K, E) the first layer's input values of each level (activation dtype; the model's
    ``prepare`` of every level, or its input embedding); dtype: activation dtype (float32 or float64);
    tiles: empty, or for a bfloat16 pack on a CPU with AMX the matrices' AMX copies (:func:`pack_tiles`), used
    by the "cpu" backend at the ``amx`` level.
    """

    layout: PixelCNNLayout
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    input_table: torch.Tensor
    dtype: torch.dtype
    tiles: list[torch.Tensor] = field(default_factory=list)

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def image_channels(self) -> int:
        return self.layout.channels

    @property
    def num_classes(self) -> int:
        return self.layout.classes

    def new_caches(self, batch: int, height: int, width: int) -> list[torch.Tensor]:
        """Zeroed caches for `batch` images of `width` columns: [(B, rows, W + 2·pad, Cin)]."""
        return [torch.zeros(batch, rows, width + 2 * pad, cin, dtype=self.dtype)
                for rows, pad, cin in cache_specs(self.layout)]


def pack_tiles(packed: PixelCNNFused) -> list[torch.Tensor]:
    """The AMX copy of a bfloat16 pack (:mod:`arkern.ops.amx_layout`): per matrix W (m × n), the tiles of
    W[:, :cut] then of W[:, cut:], cut from :func:`tile_splits` (0: one block of tiles for all of W)."""
    out = []
    for w, (m, n), cut in zip(packed.weights, matrix_shapes(packed.layout), tile_splits(packed.layout)):
        full = F.pad(untile_matrix(w, m, n), (0, 0, 0, pad16(m) - m))
        parts = [full[:, :cut]] if cut else []
        out.append(torch.cat([pack_vnni(p) for p in (*parts, full[:, cut:])]))
    return out


# --------------------------------------------------------------------------------------- the op face

BACKENDS = OpBackends(OP)
BACKENDS.register("reference", ref.pixelcnn_generate, (torch.float32, torch.bfloat16, torch.float64))
BACKENDS.register("cpu", lambda *args: torch.ops.arkern.pixelcnn_generate(*args),
                  (torch.float32, torch.bfloat16, torch.float64), torch_op="arkern::pixelcnn_generate")


def validate(packed: PixelCNNFused, caches: list[torch.Tensor], image: torch.Tensor, noise: torch.Tensor,
             cond: torch.Tensor | None, row_begin: int, row_end: int, temperature: float, top_k: int | None,
             top_p: float | None, forced: torch.Tensor | None) -> None:
    """Check a pixelcnn_generate call; raises ValueError / TypeError naming the argument."""
    lay = packed.layout
    C, K, h, depth = lay.channels, lay.classes, lay.hidden, lay.depth
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != C:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{OP}: image must be (B, {C}, H, W), got {got}")
    if image.dtype != torch.int64 or not image.is_contiguous():
        raise TypeError(f"{OP}: image must be a contiguous int64 tensor, got {image.dtype}")
    B, _, H, W = image.shape
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != tuple(image.shape):
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"{OP}: noise must have the image's shape {tuple(image.shape)}, got {got}")
    check_uniforms(OP, noise, image.device)
    table = packed.input_table
    if table.dtype != packed.dtype or tuple(table.shape) != (K, lay.input_width) or not table.is_contiguous():
        raise ValueError(f"{OP}: packed.input_table must be contiguous {packed.dtype} ({K}, {lay.input_width}), got "
                         f"{table.dtype} {tuple(table.shape)}")
    specs = cache_specs(packed.layout)
    if len(caches) != len(specs):
        raise ValueError(f"{OP}: expected {len(specs)} caches (PixelCNNFused.new_caches), got {len(caches)}")
    for n, (c, (rows, pad, cin)) in enumerate(zip(caches, specs)):
        if c.dtype != packed.dtype or tuple(c.shape) != (B, rows, W + 2 * pad, cin) or not c.is_contiguous():
            raise ValueError(f"{OP}: caches[{n}] must be contiguous {packed.dtype} {(B, rows, W + 2 * pad, cin)}, "
                             f"got {c.dtype} {tuple(c.shape)}")
    if not (isinstance(row_begin, int) and isinstance(row_end, int) and 0 <= row_begin <= row_end <= H):
        raise ValueError(f"{OP}: rows [{row_begin}, {row_end}) must lie in [0, {H}]")
    check_warpers(temperature, top_k, top_p, OP)
    if cond is not None and (lay.kind != 1 or cond.dtype != packed.dtype
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
        packed: the network's packed weights (:class:`PixelCNNFused`).
        caches: from ``packed.new_caches(B, H, W)``, carried from one call to the next (mutated).
        image: (B, C, H, W) int64, receives the drawn levels of the rows run (mutated).
        noise: (B, C, H, W) float64 uniforms in [0, 1); sub-step g of pixel (i, j) uses noise[:, g, i, j].
        cond: (B, L, 2h) per-layer conditioning bias of a class-conditional Gated PixelCNN
            (:func:`arkern.models.pixelcnn_packing.condition_bias`).
        temperature, top_k, top_p: warpers (see :func:`arkern.distributions.sample_categorical`).
        return_logits: also return the logits of every sub-step.
        forced: (B, C, H, W) int64 levels fed instead of drawn ones (teacher forcing).
        backend: "cpu", "reference" or None.

    Returns:
        (B, rows, W, C*K) logits in the activation dtype (channel g's from sub-step g), or an empty tensor.
    """
    row_end = image.shape[2] if row_end is None else row_end
    validate(packed, caches, image, noise, cond, row_begin, row_end, temperature, top_k, top_p, forced)
    kernel = BACKENDS.select(backend, image.device, packed.weight_dtype)
    tiles = (list(packed.tiles),) if kernel.backend == "cpu" else ()  # its AMX copy (maybe empty)
    return kernel.fn(list(packed.layout), list(packed.weights), list(packed.biases), packed.input_table,
                     list(caches), image, noise,
                     cond, row_begin, row_end, float(temperature), int(top_k or 0),
                     float(top_p if top_p is not None else 1.0), bool(return_logits), forced, *tiles)


def matrix_elements(packed: PixelCNNFused) -> int:
    """Packed matrix elements, padding included (multiply-adds per pixel of a grey image, roughly)."""
    return sum(w.numel() for w in packed.weights)


__all__ = ["PixelCNNFused", "PixelCNNLayout", "pack_tiles", "tile_matrix", "untile_matrix", "matrix_shapes",
           "cache_specs", "pixelcnn_generate", "BACKENDS"]
