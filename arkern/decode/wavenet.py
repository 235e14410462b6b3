"""Cached WaveNet decoding (Fast WaveNet; docs/design.md, "Cached decoding"): state, steppers, samplers.

- ``naive``: re-run :meth:`WaveNet.forward` over everything generated so far, take the newest logits.
- ``cached``: :class:`WaveNetState` keeps per layer a ring buffer of its last ``d_l`` inputs (kernel 2, so
  (K-1)·d = d); :class:`WaveNetStepper` computes one new position per layer per step with arkern ops
  (``causal_conv1d_update``), or with plain PyTorch (``ops="eager"``, the baseline users would write).
- ``fused``: ``torch.ops.arkern.wavenet_generate`` runs many steps per call in C++ on the same state.

All three draw with :func:`arkern.distributions.sample_categorical` semantics from the same pre-drawn
uniforms, so they return the same samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arkern.decode.methods import METHODS
from arkern.distributions import sample_categorical
from arkern.models.wavenet import WaveNet, packed_weights
from arkern.ops.causal_conv1d import causal_conv1d_update
from arkern.ops.wavenet_decode import wavenet_generate


@dataclass
class WaveNetState:
    """Decoding state of a batch of B sequences at absolute time ``t`` (the next sample to draw).

    rings: per layer (B, R, d_l), a view of time-major (B, d_l, R) storage; the layer input of time s
        sits in column s % d_l, so after t steps the buffer holds the inputs of times t-d_l .. t-1
        (zeros before time 0).
    prev: (B, 2) int64, [y[t-2], y[t-1]] (the start value before the sequence).
    cond: (B, frames, L, 2R) projected local conditioning, or None.
    gcond: (B, L, 2R) projected global conditioning, or None.
    """

    rings: list[torch.Tensor]
    prev: torch.Tensor
    t: int
    cond: torch.Tensor | None = None
    gcond: torch.Tensor | None = None
    cond_hop: int = 1

    @classmethod
    @torch.no_grad()
    def new(cls, model: WaveNet, batch_size: int, *, cond: torch.Tensor | None = None,
            gcond: torch.Tensor | None = None, length: int | None = None,
            dtype: torch.dtype | None = None) -> WaveNetState:
        """Empty state for `batch_size` rows; cond (B, C, frames) / gcond (B, G) as for the model's forward.

        dtype: dtype of the ring buffers and conditioning (default: the model's; float32 for `fused`).
        """
        dtype = dtype or model.out.weight.dtype
        device = model.out.weight.device
        R = model.config.residual_channels
        frames, glob = model.conditioning(cond, gcond, batch=batch_size, length=length)
        # (B, R, d) views of time-major storage: a step reads/writes R contiguous values per layer
        rings = [torch.zeros(batch_size, d, R, dtype=dtype, device=device).transpose(1, 2) for d in model.dilations]
        prev = torch.full((batch_size, 2), model.start_value, dtype=torch.int64, device=device)
        return cls(rings, prev, 0,
                   None if frames is None else frames.to(dtype).contiguous(),
                   None if glob is None else glob.to(dtype).contiguous(), model.config.cond_hop)

    @property
    def batch_size(self) -> int:
        return self.prev.shape[0]

    def history(self, layer: int) -> torch.Tensor:
        """(B, R, d) inputs of `layer` at times t-d .. t-1, oldest first (zeros before time 0)."""
        ring = self.rings[layer]
        d = ring.shape[-1]
        cols = [(self.t - d + j) % d for j in range(d)]
        return ring[:, :, cols]


class WaveNetStepper:
    """One cached decoding step of a WaveNet: O(layers) work, independent of how much was generated.

    ops="arkern" runs the dilated convs with ``arkern.ops.causal_conv1d_update`` on the ring buffers;
    ops="eager" is the same step written with plain PyTorch indexing and matmuls.
    """

    def __init__(self, model: WaveNet, ops: str = "arkern") -> None:
        if ops not in ("arkern", "eager"):
            raise ValueError(f"WaveNetStepper: ops must be 'arkern' or 'eager', got {ops!r}")
        self.model = model
        self.update = causal_conv1d_update if ops == "arkern" else None
        with torch.no_grad():
            # the eager step's fused [x(t-d); x(t)] -> 2R matrices, built once
            self.w_cat = [torch.cat([c.weight[:, :, 0], c.weight[:, :, 1]], 1) for c in model.dilated]
        self._seqlens: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, state: WaveNetState, y: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the logits of time state.t (B, A) and advance the layer buffers by one position.

        The caller then feeds the drawn (or forced) samples with :meth:`push`.
        """
        m = self.model
        R = m.config.residual_channels
        t = state.t
        x = m.embed(state.prev[:, 0], state.prev[:, 1]).to(state.rings[0].dtype)
        skip = 0
        for i, d in enumerate(m.dilations):
            ring = state.rings[i]
            conv = m.dilated[i]
            if self.update is not None:
                if self._seqlens is None or self._seqlens.shape[0] != ring.shape[0]:
                    self._seqlens = torch.empty(ring.shape[0], dtype=torch.int32, device=ring.device)
                self._seqlens.fill_(t)
                pre = self.update(x, ring, conv.weight, conv.bias, dilation=d, cache_seqlens=self._seqlens)
            else:
                past = ring[:, :, t % d].clone()
                ring[:, :, t % d] = x
                pre = torch.addmm(conv.bias, torch.cat([past, x], 1), self.w_cat[i].t())
            if state.cond is not None:
                pre = pre + state.cond[:, t // state.cond_hop, i]
            if state.gcond is not None:
                pre = pre + state.gcond[:, i]
            g = torch.tanh(pre[:, :R]) * torch.sigmoid(pre[:, R:])
            skip = skip + F.linear(g, m.skip[i].weight[:, :, 0], m.skip[i].bias)
            if i < len(m.res):
                x = x + F.linear(g, m.res[i].weight[:, :, 0], m.res[i].bias)
        h = F.relu(F.linear(F.relu(skip), m.out.weight[:, :, 0], m.out.bias))
        return F.linear(h, m.end.weight[:, :, 0], m.end.bias)

    @staticmethod
    def push(state: WaveNetState, y: torch.Tensor) -> None:
        """Record the samples y (B,) int64 of time state.t and move to the next time."""
        state.prev[:, 0] = state.prev[:, 1]
        state.prev[:, 1] = y
        state.t += 1


# ---------------------------------------------------------------- the three samplers

@torch.no_grad()
def sample(model: WaveNet, noise: torch.Tensor, *, method: str = "fused", temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, cond: torch.Tensor | None = None,
           gcond: torch.Tensor | None = None, callback: Callable[[torch.Tensor, int], None] | None = None,
           progress: Callable[[int], None] | None = None, chunk_size: int = 1024,
           weight_dtype: torch.dtype = torch.float32, ops: str = "arkern", forced: torch.Tensor | None = None,
           return_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample len = noise.shape[1] steps for B = noise.shape[0] rows; returns (B, len) int64 samples.

    Args:
        noise: (B, len) float64 uniforms, one per sample.
        method: "naive", "cached" or "fused".
        cond: local conditioning (B, C, ceil(len / cond_hop)); gcond: global conditioning (B, G).
        callback: called as callback(samples (B, n), start) after every chunk of n <= chunk_size steps.
        progress: called with the number of steps done after every chunk (e.g. a tqdm update).
        weight_dtype: packed weight dtype for "fused" (float32 or bfloat16).
        ops: "arkern" or "eager" step implementation for "cached".
        forced: (B, len) int64 samples to feed instead of drawing (teacher forcing; noise is not used).
        return_logits: also return the (B, len, A) logits of every step.
    """
    if method not in METHODS:
        raise ValueError(f"sample: method must be one of {METHODS}, got {method!r}")
    B, T = noise.shape
    local, glob = cond, gcond
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"generate: chunk_size must be an int, got {type(chunk_size).__name__} {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"generate: chunk_size must be >= 1, got {chunk_size}")
    if forced is not None:
        if not isinstance(forced, torch.Tensor) or forced.dtype != torch.int64 or tuple(forced.shape) != (B, T):
            got = f"{forced.dtype} {tuple(forced.shape)}" if isinstance(forced, torch.Tensor) else type(forced).__name__
            raise ValueError(f"generate: forced must be int64 {(B, T)}, got {got}")
        A = model.config.num_classes
        if forced.numel() and (int(forced.min()) < 0 or int(forced.max()) >= A):
            raise ValueError(f"generate: forced holds samples outside [0, {A}), got [{int(forced.min())}, "
                             f"{int(forced.max())}]")
    draw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    out = torch.empty(B, T, dtype=torch.int64, device=noise.device)
    logits = []
    if method == "fused":
        state = WaveNetState.new(model, B, cond=local, gcond=glob, length=T, dtype=torch.float32)
        packed = packed_weights(model, weight_dtype)
    elif method == "cached":
        state = WaveNetState.new(model, B, cond=local, gcond=glob, length=T)
        stepper = WaveNetStepper(model, ops=ops)
    else:
        model.conditioning(local, glob, batch=B, length=T)  # validate up front
    for s0 in range(0, T, chunk_size):
        s1 = min(T, s0 + chunk_size)
        if method == "fused":
            ys, lg = wavenet_generate(packed, state.rings, state.prev, state.t, noise[:, s0:s1].contiguous(),
                                      cond=state.cond, cond_hop=state.cond_hop, gbias=state.gcond,
                                      return_logits=return_logits,
                                      forced=None if forced is None else forced[:, s0:s1].contiguous(), **draw)
            state.t += s1 - s0
            out[:, s0:s1] = ys
            if return_logits:
                logits.append(lg)
        else:
            for s in range(s0, s1):
                if method == "cached":
                    lg = stepper.step(state)
                else:
                    lg = naive_logits(model, out[:, :s], local, glob)
                y = forced[:, s] if forced is not None else sample_categorical(lg, noise[:, s], **draw)
                out[:, s] = y
                if method == "cached":
                    stepper.push(state, y)
                if return_logits:
                    logits.append(lg.unsqueeze(1))
        if callback is not None:
            callback(out[:, s0:s1], s0)
        if progress is not None:
            progress(s1 - s0)
    if return_logits:
        A = model.config.num_classes
        return out, (torch.cat(logits, 1) if logits else noise.new_empty(B, 0, A))
    return out


def naive_logits(model: WaveNet, y: torch.Tensor, cond: torch.Tensor | None = None,
                 gcond: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, A) of the next sample after y (B, t): a full forward over y plus a placeholder."""
    B, t = y.shape
    ext = torch.cat([y, y.new_full((B, 1), model.start_value)], 1)
    if cond is not None:
        cond = cond[:, :, : -(-(t + 1) // model.config.cond_hop)]
    return model(ext, cond, gcond)[:, :, t]
