"""Cached WaveNet decoding (Fast WaveNet; docs/design.md, "Cached decoding"): state, steppers, samplers.

- ``naive``: re-run :meth:`WaveNet.forward` over everything generated so far, take the newest outputs.
- ``cached``: :class:`WaveNetState` keeps per layer a ring buffer of its last (K-1)·d_l inputs;
  :class:`WaveNetStepper` computes one new position per layer per step with arkern ops
  (``causal_conv1d_update``), or with plain PyTorch (``ops="eager"``, the baseline users would write).
- ``fused``: many steps per call in C++ on the same state: ``torch.ops.arkern.wavenet_generate`` for the
  nv-wavenet architecture (kernel 2, softmax, G = 2R, end = classes; also Triton/CUDA), else
  ``torch.ops.arkern.wavenet_family_generate`` (every config).

All three draw with :func:`arkern.wavenet_heads.sample` semantics from the same pre-drawn uniforms
(one per step for softmax and Gaussian heads, two for the mixture of logistics: the component, then the
logistic quantile), so they return the same samples.

Local conditioning is upsampled and projected window by window while sampling (:meth:`WaveNet.local_window`,
windows of about 4 MB of projected features, at least 8 samples), never for the whole utterance at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arkern import wavenet_heads as heads
from arkern.decode.methods import METHODS
from arkern.models.wavenet import WaveNet, fused_unsupported, packed_family_weights, packed_weights
from arkern.ops.causal_conv1d import causal_conv1d_update
from arkern.ops.wavenet_decode import new_rings, wavenet_generate
from arkern.ops.wavenet_family_decode import wavenet_family_generate

COND_WINDOW_FLOATS = 2**20  # projected local conditioning held at once while sampling (floats, all rows;
# windows have at least 8 samples)


@dataclass
class WaveNetState:
    """Decoding state of a batch of B sequences at absolute time ``t`` (the next sample to draw).

    rings: per layer (B, R, (K-1)·d_l), a view of time-major (B, (K-1)·d_l, R) storage (or ((K-1)·d_l, B, R),
        ``ring_storage="slots"``); the layer input of time s sits in column s % ((K-1)·d_l) (zeros before time 0).
    prev: (B, 2), [y[t-2], y[t-1]]: int64 classes, or float64 samples for scalar input (the start value
        before the sequence).
    cond: projected local conditioning (B, n, L, G) of cond indices [cond_start, cond_start + n), an index
        being a frame of cond_hop samples (nearest upsampling) or one sample (cond_hop 1), or None.
    gcond: (B, L, G) projected global conditioning, or None.
    """

    rings: list[torch.Tensor]
    prev: torch.Tensor
    t: int
    cond: torch.Tensor | None = None
    gcond: torch.Tensor | None = None
    cond_hop: int = 1
    cond_start: int = 0

    @classmethod
    @torch.no_grad()
    def new(cls, model: WaveNet, batch_size: int, *, cond: torch.Tensor | None = None,
            gcond: torch.Tensor | None = None, length: int | None = None,
            dtype: torch.dtype | None = None, ring_storage: str = "rows") -> WaveNetState:
        """Empty state for `batch_size` rows; cond / gcond as for the model's forward, projected for the whole
        run (:meth:`WaveNet.conditioning`; the samplers instead project window by window).

        dtype: dtype of the ring buffers and conditioning (default: the model's; float32 for `fused`).
        ring_storage: "rows", each row's rings (B, (K-1)·d, R) contiguous, or "slots", ((K-1)·d, B, R): a step of
            many rows then reads and writes one contiguous block per layer (taken by ``wavenet_generate`` only, see
            :func:`arkern.ops.wavenet_decode.ring_storage`; the fused sampler uses it on CPU).
        """
        dtype = dtype or model.dtype
        device = model.out.weight.device
        cfg = model.config
        R, K = cfg.residual_channels, cfg.kernel_size
        if cond is not None:
            model.check_local(cond, batch_size, length)
        local = model.local_all(cond, length)
        glob = model.global_bias(gcond, batch_size)
        # (B, R, S) views of time-major storage: a step reads/writes R contiguous values per layer
        rings = new_rings(batch_size, R, [(K - 1) * d for d in model.dilations], ring_storage, dtype=dtype,
                          device=device)
        pdt = torch.float64 if cfg.input == "scalar" else torch.int64
        prev = torch.full((batch_size, 2), model.start_value, dtype=pdt, device=device)
        hop = cfg.cond_hop if cfg.upsample == "nearest" else 1
        return cls(rings, prev, 0, None if local is None else local.to(dtype).contiguous(),
                   None if glob is None else glob.to(dtype).contiguous(), hop)

    @property
    def batch_size(self) -> int:
        return self.prev.shape[0]

    def history(self, layer: int) -> torch.Tensor:
        """(B, R, S) inputs of `layer` at times t-S .. t-1, oldest first (zeros before time 0)."""
        ring = self.rings[layer]
        S = ring.shape[-1]
        return ring[:, :, [(self.t - S + j) % S for j in range(S)]]

    @torch.no_grad()
    def set_window(self, model: WaveNet, cond: torch.Tensor | None, start: int, stop: int) -> tuple[int, int]:
        """Project the local conditioning of samples [start, stop) into ``cond`` -> (first index, its
        sample): the op reads index (t - first sample) // cond_hop + (first sample - index · hop) ..."""
        if cond is None:
            return start, start
        if model.config.upsample == "nearest":
            hop = model.config.cond_hop
            f0, f1 = start // hop, -(-stop // hop)
            self.cond = model.local_frames(cond, f0, f1).to(self.rings[0].dtype).contiguous()
            self.cond_hop, self.cond_start = hop, f0
            return f0, f0 * hop
        self.cond = model.local_window(cond, start, stop).to(self.rings[0].dtype).contiguous()
        self.cond_hop, self.cond_start = 1, start
        return start, start


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
            # the eager step's [x(t-(K-1)d); ...; x(t)] -> G matrices, built once
            self.w_cat = [c.weight.permute(0, 2, 1).reshape(c.weight.shape[0], -1) for c in model.dilated]
        self._seqlens: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, state: WaveNetState) -> torch.Tensor:
        """Compute the head outputs of time state.t (B, out_channels) and advance the layer buffers one position.

        The caller then feeds the drawn (or forced) samples with :meth:`push`.
        """
        m = self.model
        cfg = m.config
        H, K = cfg.gates // 2, cfg.kernel_size
        t = state.t
        x = m.embed(state.prev[:, 0], state.prev[:, 1]).to(state.rings[0].dtype)
        skip = 0
        for i, (d, c) in enumerate(zip(m.dilations, cfg.skip_factors())):
            ring = state.rings[i]
            conv = m.dilated[i]
            if self.update is not None:
                if self._seqlens is None or self._seqlens.shape[0] != ring.shape[0]:
                    self._seqlens = torch.empty(ring.shape[0], dtype=torch.int32, device=ring.device)
                self._seqlens.fill_(t)
                pre = self.update(x, ring, conv.weight, conv.bias, dilation=d, cache_seqlens=self._seqlens)
            else:
                S = ring.shape[-1]
                taps = [ring[:, :, (t - (K - 1 - k) * d) % S] for k in range(K - 1)]
                inp = torch.cat([*taps, x], 1)  # read the taps before this step's input replaces the oldest
                ring[:, :, t % S] = x
                pre = F.linear(inp, self.w_cat[i], conv.bias)
            if state.cond is not None:
                pre = pre + state.cond[:, t // state.cond_hop - state.cond_start, i]
            if state.gcond is not None:
                pre = pre + state.gcond[:, i]
            g = torch.tanh(pre[:, :H]) * torch.sigmoid(pre[:, H:])
            s = F.linear(g, m.skip[i].weight[:, :, 0], m.skip[i].bias)
            skip = skip + (s * c if c != 1.0 else s)
            if i < len(m.res):
                x = x + F.linear(g, m.res[i].weight[:, :, 0], m.res[i].bias)
                if cfg.residual_scale != 1.0:
                    x = x * cfg.residual_scale
        h = F.relu(F.linear(F.relu(skip), m.out.weight[:, :, 0], m.out.bias))
        return F.linear(h, m.end.weight[:, :, 0], m.end.bias)

    @staticmethod
    def push(state: WaveNetState, y: torch.Tensor) -> None:
        """Record the samples y (B,) of time state.t and move to the next time."""
        state.prev[:, 0] = state.prev[:, 1]
        state.prev[:, 1] = y
        state.t += 1


# ---------------------------------------------------------------- the three samplers

def _check_forced(model: WaveNet, forced: torch.Tensor, B: int, T: int) -> None:
    cfg = model.config
    want = torch.int64 if cfg.head == "softmax" else torch.float64
    if not isinstance(forced, torch.Tensor) or forced.dtype != want or tuple(forced.shape) != (B, T):
        got = f"{forced.dtype} {tuple(forced.shape)}" if isinstance(forced, torch.Tensor) else type(forced).__name__
        raise ValueError(f"generate: forced must be {str(want).replace('torch.', '')} {(B, T)}, got {got}")
    if cfg.head == "softmax" and forced.numel() and (int(forced.min()) < 0 or int(forced.max()) >= cfg.num_classes):
        raise ValueError(f"generate: forced holds samples outside [0, {cfg.num_classes}), got [{int(forced.min())}, "
                         f"{int(forced.max())}]")


def _window_size(model: WaveNet, batch: int, chunk: int) -> int:
    """Samples per conditioning window: projected features of at most COND_WINDOW_FLOATS floats."""
    cfg = model.config
    n = max(1, COND_WINDOW_FLOATS // max(1, batch * cfg.num_layers * cfg.gates))
    if cfg.upsample == "nearest":
        n *= cfg.cond_hop
    return max(8, min(chunk, n))


def _roll_rings(rings: list[torch.Tensor], shift: int) -> None:
    """Rotate every ring so that column j holds what column (j + shift) % S held."""
    for ring in rings:
        r = shift % ring.shape[-1]
        if r:
            ring.copy_(ring.roll(-r, dims=-1))


@torch.no_grad()
def sample(model: WaveNet, noise: torch.Tensor, *, method: str = "fused", temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, cond: torch.Tensor | None = None,
           gcond: torch.Tensor | None = None, callback: Callable[[torch.Tensor, int], None] | None = None,
           progress: Callable[[int], None] | None = None, chunk_size: int = 1024,
           weight_dtype: torch.dtype = torch.float32, ops: str = "arkern", forced: torch.Tensor | None = None,
           return_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample len = noise.shape[1] steps for B = noise.shape[0] rows.

    Args:
        noise: float64 uniforms, (B, len) (softmax and Gaussian heads) or (B, len, 2) (mixture of logistics).
        method: "naive", "cached" or "fused".
        cond: local conditioning (B, C, frames) covering len samples; gcond: global conditioning.
        callback: called as callback(samples (B, n), start) after every chunk of n <= chunk_size steps.
        progress: called with the number of steps done after every chunk (e.g. a tqdm update).
        weight_dtype: packed weight dtype for "fused" (float32 or bfloat16).
        ops: "arkern" or "eager" step implementation for "cached".
        forced: (B, len) samples to feed instead of drawing (teacher forcing; noise is not used).
        return_logits: also return the (B, len, out_channels) head outputs of every step.

    Returns:
        (B, len) int64 classes (softmax head) or float64 samples in [-1, 1]; with return_logits, also the
        head outputs.
    """
    if method not in METHODS:
        raise ValueError(f"sample: method must be one of {METHODS}, got {method!r}")
    cfg = model.config
    B, T = noise.shape[:2]
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"generate: chunk_size must be an int, got {type(chunk_size).__name__} {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"generate: chunk_size must be >= 1, got {chunk_size}")
    heads.check_head_warpers(cfg.head, temperature, top_k, top_p, "generate")
    if forced is not None:
        _check_forced(model, forced, B, T)
    model.check_local(cond, B, T)
    draw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    softmax = cfg.head == "softmax"
    out = torch.empty(B, T, dtype=torch.int64 if softmax else torch.float64, device=noise.device)
    logits = []
    state = None
    if method == "fused":
        nv_arch = fused_unsupported(cfg) is None
        # wavenet_generate on CPU: each slot's rows contiguous (one block per layer and step)
        storage = "slots" if nv_arch and noise.device.type == "cpu" else "rows"
        state = WaveNetState.new(model, B, gcond=gcond, dtype=torch.float32, ring_storage=storage)
        op = wavenet_generate if nv_arch else wavenet_family_generate
        packed = (packed_weights if nv_arch else packed_family_weights)(model, weight_dtype)
    elif method == "cached":
        state = WaveNetState.new(model, B, gcond=gcond)
        stepper = WaveNetStepper(model, ops=ops)
    else:
        model.global_bias(gcond, B)  # validate up front
    window = _window_size(model, B, chunk_size) if cond is not None else chunk_size
    for s0 in range(0, T, chunk_size):
        s1 = min(T, s0 + chunk_size)
        for a in range(s0, s1, window):
            b = min(s1, a + window)
            if method == "fused":
                _, first = state.set_window(model, cond, a, b)
                t_op = a if cond is None else a - first  # the op indexes the window from 0; rings rotated to match
                _roll_rings(state.rings, a - t_op)
                ys, lg = op(packed, state.rings, state.prev, t_op, noise[:, a:b].contiguous(),
                                          cond=state.cond, cond_hop=state.cond_hop, gbias=state.gcond,
                                          return_logits=return_logits,
                                          forced=None if forced is None else forced[:, a:b].contiguous(), **draw)
                _roll_rings(state.rings, -(a - t_op))
                state.t = b
                out[:, a:b] = ys
                if return_logits:
                    logits.append(lg)
                continue
            if method == "cached":
                state.set_window(model, cond, a, b)
            for s in range(a, b):
                lg = stepper.step(state) if method == "cached" else naive_logits(model, out[:, :s], cond, gcond)
                if forced is not None:
                    y = forced[:, s]
                else:
                    y = heads.sample(cfg.head, lg, noise[:, s], log_scale_min=cfg.log_scale_min, **draw)
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
        return out, (torch.cat(logits, 1) if logits else noise.new_empty(B, 0, cfg.out_channels))
    return out


def naive_logits(model: WaveNet, y: torch.Tensor, cond: torch.Tensor | None = None,
                 gcond: torch.Tensor | None = None) -> torch.Tensor:
    """Head outputs (B, out_channels) of the next sample after y (B, t): a full forward over y plus a
    placeholder."""
    B, t = y.shape
    ext = torch.cat([y, y.new_full((B, 1), model.start_value)], 1)
    if cond is not None and model.config.upsample == "nearest":
        cond = cond[:, :, : -(-(t + 1) // model.config.cond_hop)]
    return model(ext, cond, gcond)[:, :, t]
