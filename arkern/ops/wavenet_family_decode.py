"""wavenet_family_decode: the fused sampler of the generalised WaveNet family,
``torch.ops.arkern.wavenet_family_generate``.

One call advances a whole network T steps without returning to Python: kernel K taps on ring buffers of
(K-1)·d inputs, gate channels G = 2H independent of the residual ones, an S -> E -> O head, embedding or scalar
input, and the softmax, mixture-of-logistics and Gaussian draws from pre-drawn uniforms (one per step, two for
the mixture: the component, then the logistic quantile). Packed layout and semantics:
:mod:`arkern.reference.wavenet_family_decode`. The ring buffers and the last two samples are mutated in place.

Backends (float32 or bfloat16 packed weights): "reference" (plain PyTorch, any device) and "cpu"
(csrc/cpu/wavenet_family_decode.cpp). The nv-wavenet architecture (K = 2, softmax, G = 2R, E = A) also has the
cpu/triton/cuda op :mod:`arkern.ops.wavenet_decode`. This is a decode op: it has no autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arkern.backends import OpBackends
from arkern.distributions import check_warpers
from arkern.ops._library import LIB, same_device
from arkern.ops._validate import check_step_conditioning, check_uniforms
from arkern.reference import wavenet_family_decode as ref

OP = "wavenet_family_generate"

LIB.define("wavenet_family_generate(Tensor emb, Tensor w_dil, Tensor b_dil, Tensor w_rs, Tensor b_rs, "
           "Tensor w_out, Tensor b_out, Tensor w_end, Tensor b_end, int[] dims, int[] dilations, Tensor(a!)[] rings, "
           "Tensor(b!) prev, int t0, Tensor noise, Tensor? cond, int cond_hop, Tensor? gbias, float temperature, "
           "int top_k, float top_p, float log_scale_min, bool return_logits, Tensor? forced) -> (Tensor, Tensor)")


@torch.library.register_fake("arkern::wavenet_family_generate")
def _fake(emb, w_dil, b_dil, w_rs, b_rs, w_out, b_out, w_end, b_end, dims, dilations, rings, prev, t0, noise, cond,
          cond_hop, gbias, temperature, top_k, top_p, log_scale_min, return_logits, forced):
    same_device(OP, noise=noise, prev=prev, emb=emb, cond=cond, gbias=gbias, forced=forced,
                ring=rings[0] if rings else None)
    b, t = noise.shape[:2]
    logits = emb.new_empty((b, t, dims[5])) if return_logits else emb.new_empty(0)
    return prev.new_empty((b, t)), logits


@dataclass
class WaveNetFamilyFused:
    """A generalised WaveNet's weights packed for :func:`wavenet_family_generate` (layout:
    :mod:`arkern.reference.wavenet_family_decode`)."""

    emb: torch.Tensor
    w_dil: torch.Tensor
    b_dil: torch.Tensor
    w_rs: torch.Tensor
    b_rs: torch.Tensor
    w_out: torch.Tensor
    b_out: torch.Tensor
    w_end: torch.Tensor
    b_end: torch.Tensor
    dims: list[int]  # [K, R, H, S, E, O, A, M, input, head]
    dilations: list[int]
    log_scale_min: float

    @property
    def dtype(self) -> torch.dtype:
        return self.w_dil.dtype

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.emb, self.w_dil, self.b_dil, self.w_rs, self.b_rs, self.w_out, self.b_out, self.w_end,
                self.b_end)


BACKENDS = OpBackends(OP)
BACKENDS.register("reference", ref.wavenet_family_generate, (torch.float32, torch.bfloat16))
BACKENDS.register("cpu", lambda *args: torch.ops.arkern.wavenet_family_generate(*args),
                  (torch.float32, torch.bfloat16), torch_op="arkern::wavenet_family_generate")


def validate(packed: WaveNetFamilyFused, rings: list[torch.Tensor], prev: torch.Tensor, t0: int, noise: torch.Tensor,
             cond: torch.Tensor | None, cond_hop: int, gbias: torch.Tensor | None, temperature: float,
             top_k: int | None, top_p: float | None, forced: torch.Tensor | None) -> None:
    """Check a wavenet_family_generate call (raises ValueError/TypeError naming the argument)."""
    K, R, H, _, _, _, A, _, scalar, head = packed.dims
    L = len(packed.dilations)
    per_step = 2 if head == 1 else 1
    if not isinstance(noise, torch.Tensor) or noise.dim() != (3 if per_step == 2 else 2) or (
            per_step == 2 and noise.shape[2] != 2):
        want = "(B, T, 2)" if per_step == 2 else "(B, T)"
        raise ValueError(f"{OP}: noise must be a {want} tensor of uniforms, got "
                         f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
    check_uniforms(OP, noise, prev.device if isinstance(prev, torch.Tensor) else noise.device)
    B, T = noise.shape[:2]
    pdt = torch.float64 if scalar else torch.int64
    if prev.dtype != pdt or tuple(prev.shape) != (B, 2) or not prev.is_contiguous():
        raise ValueError(f"{OP}: prev must be a contiguous {pdt} ({B}, 2) tensor, got {prev.dtype} {tuple(prev.shape)}")
    if len(rings) != L:
        raise ValueError(f"{OP}: rings must hold {L} tensors (one per layer), got {len(rings)}")
    for i, (r, d) in enumerate(zip(rings, packed.dilations)):
        span = (K - 1) * d
        if r.dtype != torch.float32 or tuple(r.shape) != (B, R, span) or not r.transpose(1, 2).is_contiguous():
            raise ValueError(f"{OP}: rings[{i}] must be float32 {(B, R, span)} with time-major storage, got "
                             f"{r.dtype} {tuple(r.shape)} strides {r.stride()}")
    check_step_conditioning(OP, t0, T, B, L, 2 * H, cond, cond_hop, gbias)
    check_warpers(temperature, top_k, top_p, OP)
    if forced is not None and (forced.dtype != pdt or tuple(forced.shape) != (B, T)):
        raise ValueError(f"{OP}: forced must be {pdt} ({B}, {T}), got {forced.dtype} {tuple(forced.shape)}")
    if not scalar:
        for name, t in (("prev", prev), ("forced", forced)):
            if t is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= A):
                raise ValueError(f"{OP}: {name} holds classes outside [0, {A})")


def wavenet_family_generate(packed: WaveNetFamilyFused, rings: list[torch.Tensor], prev: torch.Tensor, t0: int,
                            noise: torch.Tensor, *, cond: torch.Tensor | None = None, cond_hop: int = 1,
                            gbias: torch.Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
                            top_p: float | None = None, return_logits: bool = False,
                            forced: torch.Tensor | None = None,
                            backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance the network T = noise.shape[1] steps from absolute time t0 (state mutated in place).

    Args:
        packed: weights from :func:`arkern.models.wavenet.pack_wavenet_family`.
        rings: per layer (B, R, (K-1)·d_l) float32 ring buffers, views of time-major storage; the input of
            time t lives at column t % ((K-1)·d_l).
        prev: (B, 2) last two samples: int64 classes, or float64 samples (scalar input); updated in place.
        t0: absolute time of the first step.
        noise: float64 uniforms in [0, 1): (B, T), or (B, T, 2) for a mixture of logistics.
        cond: (B, frames, L, 2H) float32 projected local conditioning; frame f covers cond_hop samples.
        gbias: (B, L, 2H) float32 projected global conditioning.
        temperature, top_k, top_p: warpers of the categorical choice (classes, or the mixture component).
        return_logits: also return the (B, T, O) float32 head outputs of every step.
        forced: (B, T) samples fed instead of the drawn ones (teacher forcing), prev's dtype.
        backend: "cpu", "reference", or None (cpu when built).

    Returns:
        (samples (B, T) int64 classes or float64 samples in [-1, 1], head outputs (B, T, O) or empty).
    """
    validate(packed, rings, prev, t0, noise, cond, cond_hop, gbias, temperature, top_k, top_p, forced)
    kernel = BACKENDS.select(backend, noise.device, packed.dtype)
    return kernel.fn(*packed.tensors(), list(packed.dims), list(packed.dilations), list(rings), prev, t0, noise,
                     cond, cond_hop, gbias, float(temperature), int(top_k or 0),
                     float(top_p if top_p is not None else 1.0), float(packed.log_scale_min), bool(return_logits),
                     forced)


__all__ = ["WaveNetFamilyFused", "wavenet_family_generate", "BACKENDS"]
