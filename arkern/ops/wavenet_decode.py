"""wavenet_decode: the fused WaveNet sampler, ``torch.ops.arkern.wavenet_generate``.

One call advances a whole nv-wavenet network T steps (embedding, L gated dilated layers with their ring
buffers, skip sum, head, and the draw from pre-drawn uniforms) without returning to Python.

Weights are packed once by :func:`pack_wavenet` into :class:`WaveNetFused`: every matrix W (M × N) gets
its rows zero-padded to Mp = ceil16(M) and is stored as row tiles of up to 64 outputs, each tile
transposed (N × width) and contiguous, float32 or bfloat16; biases, embeddings and conditioning stay
float32. The ring buffers (the ``WaveNetState`` tensors) and the last two samples are mutated in place; the rings
are time-major in one of two storages (:func:`ring_storage`): "rows", (B, d, R), or "slots", (d, B, R), where a
step of a group of rows reads and writes one contiguous block per layer.

Precision: float32 weights give float32 arithmetic. bfloat16 weights define the bfloat16 precision
(docs/design.md, "bfloat16 precision"): the input of every matrix product is rounded to bfloat16 too (the
residual input x, which the ring buffers then hold rounded, the gate output, relu(skip) and the hidden layer),
each product of two bfloat16 values is exact and the sums are float32; embeddings, biases, conditioning, gates,
residual and skip sums and logits stay float32. Every backend and instruction set computes exactly this, up to
the order of the float32 sums. bfloat16 packs may carry ``tiles``, the same matrices in the AMX tile layout
(:mod:`arkern.ops.amx_layout`), which the "cpu" backend uses for row groups of 4 or more at the ``amx`` level.

Backends (float32 or bfloat16 packed weights): "reference", a plain-PyTorch loop over the same packed
tensors (the ground truth for the packing and the kernels' arithmetic; any device); "cpu"
(csrc/cpu/wavenet_decode.cpp); "triton" (arkern/triton/wavenet_decode.py; CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1 when forced); "cuda" (csrc/cuda/wavenet_decode.cu, in extensions built with CUDA). This is
a decode op: it has no autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arkern.backends import OpBackends
from arkern.distributions import check_warpers
from arkern.ops._library import LIB, same_device
from arkern.ops._validate import check_step_conditioning, check_uniforms
from arkern.ops.amx_layout import pack_vnni
from arkern.reference import wavenet_decode as ref
from arkern.reference.wavenet_decode import TILE, pad16, unpack_matrix

OP = "wavenet_generate"

LIB.define("wavenet_generate(Tensor emb, Tensor w_dil, Tensor b_dil, Tensor w_rs, Tensor b_rs, Tensor w_out, "
           "Tensor b_out, Tensor w_end, Tensor b_end, int[] dilations, Tensor(a!)[] rings, Tensor(b!) prev, "
           "int t0, Tensor noise, Tensor? cond, int cond_hop, Tensor? gbias, float temperature, int top_k, "
           "float top_p, bool return_logits, Tensor? forced, Tensor? tiles=None) -> (Tensor, Tensor)")


@torch.library.register_fake("arkern::wavenet_generate")
def _fake(emb, w_dil, b_dil, w_rs, b_rs, w_out, b_out, w_end, b_end, dilations, rings, prev, t0, noise, cond,
          cond_hop, gbias, temperature, top_k, top_p, return_logits, forced, tiles=None):
    same_device(OP, noise=noise, prev=prev, emb=emb, cond=cond, gbias=gbias, forced=forced,
                ring=rings[0] if rings else None)
    b, t = noise.shape
    logits = emb.new_empty((b, t, emb.shape[1])) if return_logits else emb.new_empty(0)
    return prev.new_empty((b, t)), logits


def pack_matrix(w: torch.Tensor, row_blocks: list[int] | None = None, dtype: torch.dtype = torch.float32
                ) -> torch.Tensor:
    """Pack W (M × N) into the kernel's tiled layout (flat, Mp × N elements).

    row_blocks splits the rows into consecutive blocks, each zero-padded to a multiple of 16 on its own
    (e.g. the tanh and sigmoid halves of a gated pre-activation); default one block of M rows.
    """
    blocks = row_blocks or [w.shape[0]]
    parts, r = [], 0
    for n in blocks:
        parts.append(F.pad(w[r:r + n], (0, 0, 0, pad16(n) - n)))
        r += n
    wp = torch.cat(parts).to(torch.float32)
    tiles = [wp[m0:m0 + TILE].t().contiguous().reshape(-1) for m0 in range(0, wp.shape[0], TILE)]
    return torch.cat(tiles).to(dtype)


def pad_vector(v: torch.Tensor, blocks: list[int]) -> torch.Tensor:
    parts, r = [], 0
    for n in blocks:
        parts.append(F.pad(v[r:r + n], (0, pad16(n) - n)))
        r += n
    return torch.cat(parts).to(torch.float32)


@dataclass
class WaveNetFused:
    """A WaveNet's weights packed for :func:`wavenet_generate` (see the module docstring).

    Shapes (Rp = ceil16(R), Sp = ceil16(S), Ap = ceil16(A)): emb (2, A, R); w_dil (L·2Rp·2R,) with
    input [x(t-d); x(t)]; b_dil (L, 2Rp); w_rs (L·(Rp+Sp)·R,) giving [residual; skip]; b_rs (L, Rp+Sp);
    w_out (Ap·S,); b_out (Ap,); w_end (Ap·A,); b_end (Ap,);
    tiles: None, or for bfloat16 packs the AMX copy of w_dil[0..L), w_rs[0..L), w_out, w_end (:func:`pack_tiles`).
    """

    emb: torch.Tensor
    w_dil: torch.Tensor
    b_dil: torch.Tensor
    w_rs: torch.Tensor
    b_rs: torch.Tensor
    w_out: torch.Tensor
    b_out: torch.Tensor
    w_end: torch.Tensor
    b_end: torch.Tensor
    dilations: list[int]
    residual_channels: int
    skip_channels: int
    num_classes: int
    tiles: torch.Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of the packed matrices."""
        return self.w_dil.dtype

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The packed tensors in the order of the op's schema."""
        return (self.emb, self.w_dil, self.b_dil, self.w_rs, self.b_rs, self.w_out, self.b_out,
                self.w_end, self.b_end)


def pack_tiles(packed: WaveNetFused) -> torch.Tensor:
    """The AMX tile copy of a bfloat16 pack's matrices (flat bfloat16; :mod:`arkern.ops.amx_layout`): the
    tiles of w_dil[l] (2Rp × 2R) for every layer, then of w_rs[l] ((Rp+Sp) × R), w_out (Ap × S), w_end (Ap × A)."""
    R, S, A, L = packed.residual_channels, packed.skip_channels, packed.num_classes, len(packed.dilations)
    Rp, Sp, Ap = pad16(R), pad16(S), pad16(A)
    parts = [pack_vnni(unpack_matrix(w, 2 * Rp, 2 * R)) for w in packed.w_dil.reshape(L, -1)]
    parts += [pack_vnni(unpack_matrix(w, Rp + Sp, R)) for w in packed.w_rs.reshape(L, -1)]
    parts += [pack_vnni(unpack_matrix(packed.w_out, Ap, S)), pack_vnni(unpack_matrix(packed.w_end, Ap, A))]
    return torch.cat(parts)


BACKENDS = OpBackends(OP)
BACKENDS.register("reference", ref.wavenet_generate, (torch.float32, torch.bfloat16))
BACKENDS.register("cpu", lambda *args: torch.ops.arkern.wavenet_generate(*args), (torch.float32, torch.bfloat16),
                  torch_op="arkern::wavenet_generate")


def _triton(*args):
    from arkern.triton.wavenet_decode import wavenet_generate as kernel  # Triton is imported lazily

    return kernel(*args)


BACKENDS.register("triton", _triton, (torch.float32, torch.bfloat16))
# csrc/cuda/wavenet_decode.cu (bound in csrc/cuda_bindings.cpp): chosen only when the extension has it
BACKENDS.register("cuda", lambda *args: torch.ops.arkern.wavenet_generate(*args), (torch.float32, torch.bfloat16),
                  torch_op="arkern::wavenet_generate")


RING_STORAGES = ("rows", "slots")


def ring_storage(ring: torch.Tensor) -> str | None:
    """The storage of a (B, R, d) ring buffer: "rows" for a view of a contiguous (B, d, R) tensor (each batch row's
    ring contiguous), "slots" for a view of a contiguous (d, B, R) one (each slot's batch rows contiguous: a step
    of many rows reads and writes one block per layer); None for anything else. Both are time-major (the R inputs
    of one time and row are contiguous); a ring that is both (B == 1 or d == 1) is "rows"."""
    if ring.dim() != 3:
        return None
    if ring.transpose(1, 2).is_contiguous():
        return "rows"
    if ring.permute(2, 0, 1).is_contiguous():
        return "slots"
    return None


def new_rings(batch: int, residual_channels: int, dilations: list[int], ring_storage: str = "rows", *,
              dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Zeroed ring buffers, per layer (batch, residual_channels, d) in storage `ring_storage` ("rows" or "slots",
    see :func:`ring_storage`)."""
    if ring_storage not in RING_STORAGES:
        raise ValueError(f"{OP}: ring_storage must be one of {RING_STORAGES}, got {ring_storage!r}")
    if ring_storage == "rows":
        return [torch.zeros(batch, d, residual_channels, dtype=dtype, device=device).transpose(1, 2)
                for d in dilations]
    return [torch.zeros(d, batch, residual_channels, dtype=dtype, device=device).permute(1, 2, 0) for d in dilations]


def validate(packed: WaveNetFused, rings: list[torch.Tensor], prev: torch.Tensor, t0: int, noise: torch.Tensor,
             cond: torch.Tensor | None, cond_hop: int, gbias: torch.Tensor | None, temperature: float,
             top_k: int | None, top_p: float | None, forced: torch.Tensor | None) -> None:
    """Check a wavenet_generate call (raises ValueError/TypeError naming the argument)."""
    R, A, L = packed.residual_channels, packed.num_classes, len(packed.dilations)
    if not isinstance(noise, torch.Tensor) or noise.dim() != 2:
        raise ValueError(f"{OP}: noise must be a (B, T) tensor of uniforms, got "
                         f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
    check_uniforms(OP, noise, prev.device if isinstance(prev, torch.Tensor) else noise.device)
    B, T = noise.shape
    if prev.dtype != torch.int64 or tuple(prev.shape) != (B, 2) or not prev.is_contiguous():
        raise ValueError(f"{OP}: prev must be a contiguous int64 ({B}, 2) tensor (batch of noise), "
                         f"got {prev.dtype} {tuple(prev.shape)}")
    if len(rings) != L:
        raise ValueError(f"{OP}: rings must hold {L} tensors (one per layer), got {len(rings)}")
    for i, (r, d) in enumerate(zip(rings, packed.dilations)):
        if (not isinstance(r, torch.Tensor) or r.dtype != torch.float32 or tuple(r.shape) != (B, R, d)
                or ring_storage(r) is None):
            got = (f"{r.dtype} {tuple(r.shape)} strides {r.stride()}" if isinstance(r, torch.Tensor)
                   else type(r).__name__)
            raise ValueError(f"{OP}: rings[{i}] must be float32 {(B, R, d)} with time-major storage, a view of a "
                             f"contiguous ({B}, {d}, {R}) tensor (torch.zeros(B, d, R).transpose(1, 2)) or of a "
                             f"({d}, {B}, {R}) one (torch.zeros(d, B, R).permute(1, 2, 0)); got {got}")
    check_step_conditioning(OP, t0, T, B, L, 2 * R, cond, cond_hop, gbias)
    check_warpers(temperature, top_k, top_p, OP)
    if forced is not None and (forced.dtype != torch.int64 or tuple(forced.shape) != (B, T)):
        raise ValueError(f"{OP}: forced must be int64 ({B}, {T}), got {forced.dtype} {tuple(forced.shape)}")
    for name, t in (("prev", prev), ("forced", forced)):
        if t is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= A):
            raise ValueError(f"{OP}: {name} holds samples outside [0, {A})")


def wavenet_generate(packed: WaveNetFused, rings: list[torch.Tensor], prev: torch.Tensor, t0: int,
                     noise: torch.Tensor, *, cond: torch.Tensor | None = None, cond_hop: int = 1,
                     gbias: torch.Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, return_logits: bool = False, forced: torch.Tensor | None = None,
                     backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance the network T = noise.shape[1] steps from absolute time t0 (state mutated in place).

    Args:
        packed: weights from :func:`pack_wavenet`.
        rings: per layer (B, R, d_l) float32 ring buffers, views of time-major storage, contiguous (B, d_l, R)
            ("rows") or (d_l, B, R) ("slots", faster for many rows on CPU; not taken by the cuda backend), see
            :func:`ring_storage` / :func:`new_rings`; the input of time t lives at column t % d_l.
        prev: (B, 2) int64 last two samples [y[t0-2], y[t0-1]]; updated to the last two of this call.
        t0: absolute time of the first step.
        noise: (B, T) float64 uniforms in [0, 1), one per step.
        cond: (B, frames, L, 2R) float32 projected local conditioning; frame f covers cond_hop samples.
        gbias: (B, L, 2R) float32 projected global conditioning.
        temperature, top_k, top_p: sampling warpers (see :func:`arkern.sampling.sample_categorical`).
        return_logits: also return the (B, T, A) float32 logits of every step.
        forced: (B, T) int64 samples fed instead of the drawn ones (teacher forcing, for checking).
        backend: "cpu", "cuda", "triton", "reference", or None: the first eligible for the tensors'
            device (CPU: cpu > reference; CUDA: cuda > triton > reference; see :mod:`arkern.backends`).

    Returns:
        (samples (B, T) int64, logits (B, T, A) float32 or an empty tensor).
    """
    validate(packed, rings, prev, t0, noise, cond, cond_hop, gbias, temperature, top_k, top_p, forced)
    kernel = BACKENDS.select(backend, noise.device, packed.dtype)
    if kernel.backend == "cuda" and any(ring_storage(r) == "slots" for r in rings):
        raise ValueError(f"{OP}: the cuda backend takes rings in \"rows\" storage (a view of a contiguous (B, d, R) "
                         "tensor), got \"slots\" storage (d, B, R)")
    tiles = (packed.tiles,) if kernel.backend == "cpu" and packed.tiles is not None else ()  # its AMX copy
    return kernel.fn(*packed.tensors(), list(packed.dilations), list(rings), prev, t0, noise, cond, cond_hop,
                     gbias, float(temperature), int(top_k or 0), float(top_p if top_p is not None else 1.0),
                     bool(return_logits), forced, *tiles)


def roofline_bytes(packed: WaveNetFused) -> int:
    """Bytes of packed matrices read per generated sample (for GB/s figures)."""
    return sum(t.numel() * t.element_size() for t in (packed.w_dil, packed.w_rs, packed.w_out, packed.w_end))


def matrix_elements(packed: WaveNetFused) -> int:
    """Packed matrix elements (multiply-adds per sample, padding included)."""
    return sum(t.numel() for t in (packed.w_dil, packed.w_rs, packed.w_out, packed.w_end))


__all__ = ["RING_STORAGES", "WaveNetFused", "new_rings", "ring_storage", "pack_matrix", "pack_tiles", "unpack_matrix",
           "pad_vector", "wavenet_generate", "BACKENDS"]
