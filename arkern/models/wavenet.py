"""WaveNet as in NVIDIA's nv-wavenet / Deep Voice (docs/design.md, "Models"), teacher-forced and trainable.

Per time step t the network sees the two previous samples y[t-1], y[t-2] (μ-law classes, the start
value ``A // 2`` before the sequence), as the sum of two embeddings (an A×R table each). Then L gated
layers, layer l with dilation d_l (doubling from 1 to max_dilation, then restarting):

    pre_l(t)  = W_l[..., 0] x_l(t - d_l) + W_l[..., 1] x_l(t) + b_l + cond_l(t)      (2R)
    g_l(t)    = tanh(pre_l[:R]) * sigmoid(pre_l[R:])                                 (R)
    x_{l+1}   = x_l + W_res,l g_l + b_res,l        (no residual after the last layer) (R)
    skip     += W_skip,l g_l + b_skip,l                                             (S)

and the head ``logits = W_end relu(W_out relu(skip) + b_out) + b_end`` (A classes). x_l at negative
times is zero (causal zero padding). Local conditioning (B, C_cond, frames) is upsampled to one frame
per ``cond_hop`` samples (nearest) and projected per layer to 2R; global conditioning (B, G) is projected
per layer to 2R and added at every step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arkern.models._packcache import cached_pack
from arkern.ops.causal_conv1d import causal_conv1d
from arkern.ops.wavenet_decode import WaveNetFused, pack_matrix, pad_vector


@dataclass(frozen=True)
class WaveNetConfig:
    """Sizes of a WaveNet. Defaults: the nv-wavenet medium configuration."""

    num_layers: int = 20
    residual_channels: int = 64
    skip_channels: int = 128
    num_classes: int = 256
    max_dilation: int = 512
    cond_channels: int = 0  # local conditioning features per frame (0: none)
    cond_hop: int = 1  # samples per conditioning frame
    global_channels: int = 0  # global conditioning vector size (0: none)

    def dilations(self) -> list[int]:
        """Dilation of every layer: 1, 2, 4, ..., max_dilation, 1, 2, ..."""
        cycle = max(1, self.max_dilation.bit_length())
        return [2 ** (i % cycle) for i in range(self.num_layers)]


class WaveNet(nn.Module):
    """nv-wavenet architecture; ``forward(y, cond)`` gives teacher-forced logits for every position."""

    def __init__(self, config: WaveNetConfig | None = None, **overrides: int) -> None:
        super().__init__()
        cfg = config or WaveNetConfig()
        if overrides:
            cfg = WaveNetConfig(**{**asdict(cfg), **overrides})
        for name in ("num_layers", "residual_channels", "skip_channels", "max_dilation", "cond_hop"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"WaveNet: {name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.num_classes < 2:
            raise ValueError(f"WaveNet: num_classes must be >= 2, got {cfg.num_classes}")
        self.config = cfg
        L, R, S, A = cfg.num_layers, cfg.residual_channels, cfg.skip_channels, cfg.num_classes
        self.dilations = cfg.dilations()
        self.embed_prev = nn.Embedding(A, R)  # sample t-2
        self.embed_cur = nn.Embedding(A, R)  # sample t-1
        self.dilated = nn.ModuleList(nn.Conv1d(R, 2 * R, 2) for _ in range(L))
        self.res = nn.ModuleList(nn.Conv1d(R, R, 1) for _ in range(L - 1))
        self.skip = nn.ModuleList(nn.Conv1d(R, S, 1) for _ in range(L))
        self.out = nn.Conv1d(S, A, 1)
        self.end = nn.Conv1d(A, A, 1)
        self.cond_proj = nn.Linear(cfg.cond_channels, L * 2 * R) if cfg.cond_channels else None
        self.global_proj = nn.Linear(cfg.global_channels, L * 2 * R, bias=False) if cfg.global_channels else None
        with torch.no_grad():  # keep deep stacks of random layers in a useful range
            for conv in self.dilated:
                conv.weight.mul_(1.0 / 2**0.5)

    @property
    def start_value(self) -> int:
        """The sample value assumed before the sequence (μ-law zero)."""
        return self.config.num_classes // 2

    def conditioning(self, cond: torch.Tensor | None = None, gcond: torch.Tensor | None = None,
                     batch: int | None = None, length: int | None = None
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Validate and project the conditioning.

        Args:
            cond: (B, cond_channels, frames) local conditioning, one frame per ``cond_hop`` samples.
            gcond: (B, global_channels) global conditioning.
            batch, length: the batch size and number of samples it must cover (checked when given).

        Returns:
            (frames (B, frames, L, 2R) or None, global (B, L, 2R) or None): per-layer additions to the
            gated layers' pre-activations, frame f covering samples [f * cond_hop, (f + 1) * cond_hop).
        """
        cfg = self.config
        L, R = cfg.num_layers, cfg.residual_channels
        frames = glob = None
        if self.cond_proj is None:
            if cond is not None:
                raise ValueError("WaveNet: condition given but the model has no local conditioning")
        else:
            if cond is None:
                raise ValueError(f"WaveNet: the model needs a local condition (B, {cfg.cond_channels}, frames)")
            if cond.dim() != 3 or cond.shape[1] != cfg.cond_channels:
                raise ValueError(f"WaveNet: condition must be (B, {cfg.cond_channels}, frames), "
                                 f"got {tuple(cond.shape)}")
            if batch is not None and cond.shape[0] != batch:
                raise ValueError(f"WaveNet: condition has batch {cond.shape[0]}, expected {batch}")
            if length is not None:
                need = -(-length // cfg.cond_hop)
                if cond.shape[2] != need:
                    raise ValueError(f"WaveNet: condition must have {need} frames for {length} samples at "
                                     f"cond_hop={cfg.cond_hop}, got {cond.shape[2]}")
            frames = self.cond_proj(cond.transpose(1, 2).to(self.out.weight.dtype))
            frames = frames.reshape(cond.shape[0], cond.shape[2], L, 2 * R)
        if self.global_proj is None:
            if gcond is not None:
                raise ValueError("WaveNet: global condition given but the model has no global conditioning")
        else:
            if gcond is None or gcond.dim() != 2 or gcond.shape[1] != cfg.global_channels:
                got = None if gcond is None else tuple(gcond.shape)
                raise ValueError(f"WaveNet: global condition must be (B, {cfg.global_channels}), got {got}")
            if batch is not None and gcond.shape[0] != batch:
                raise ValueError(f"WaveNet: global condition has batch {gcond.shape[0]}, expected {batch}")
            glob = self.global_proj(gcond.to(self.out.weight.dtype)).reshape(gcond.shape[0], L, 2 * R)
        return frames, glob

    def embed(self, older: torch.Tensor, newer: torch.Tensor) -> torch.Tensor:
        """Input of the first layer: older = y[t-2], newer = y[t-1], both (...) int64 -> (..., R)."""
        return self.embed_prev(older) + self.embed_cur(newer)

    def head(self, skip: torch.Tensor) -> torch.Tensor:
        """skip (B, S, T) summed skip outputs -> logits (B, A, T)."""
        return self.end(F.relu(self.out(F.relu(skip))))

    def forward(self, y: torch.Tensor, cond: torch.Tensor | None = None,
                gcond: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits; see :meth:`forward_with_layer_inputs`."""
        return self.forward_with_layer_inputs(y, cond, gcond)[0]

    def forward_with_layer_inputs(self, y: torch.Tensor, cond: torch.Tensor | None = None,
            gcond: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher-forced logits and every layer's input sequence.

        Args:
            y: (B, T) int64 samples in [0, A).
            cond: (B, cond_channels, ceil(T / cond_hop)) local conditioning, if the model has it.
            gcond: (B, global_channels) global conditioning, if the model has it.

        Returns:
            (logits (B, A, T), inputs): position t of the logits is the distribution of y[:, t] given
            y[:, :t]; inputs[l] (B, R, T) is the input sequence of layer l (what its ring buffer caches).
        """
        if y.dim() != 2 or y.dtype != torch.int64:
            raise ValueError(f"WaveNet: y must be an int64 (B, T) tensor, got {y.dtype} {tuple(y.shape)}")
        B, T = y.shape
        frames, glob = self.conditioning(cond, gcond, batch=B, length=T)
        start = torch.full((B, 2), self.start_value, dtype=torch.int64, device=y.device)
        ypad = torch.cat([start, y], dim=1)
        x = self.embed(ypad[:, :T], ypad[:, 1:T + 1]).transpose(1, 2)  # (B, R, T)
        R = self.config.residual_channels
        skip = 0
        inputs = []
        for i, (conv, d) in enumerate(zip(self.dilated, self.dilations)):
            inputs.append(x)
            pre = causal_conv1d(x, conv.weight, conv.bias, dilation=d)
            if frames is not None:
                per_sample = frames[:, :, i].repeat_interleave(self.config.cond_hop, dim=1)[:, :T]
                pre = pre + per_sample.transpose(1, 2)
            if glob is not None:
                pre = pre + glob[:, i].unsqueeze(-1)
            g = torch.tanh(pre[:, :R]) * torch.sigmoid(pre[:, R:])
            skip = skip + self.skip[i](g)
            if i < len(self.res):
                x = x + self.res[i](g)
        return self.head(skip), inputs


# ---------------------------------------------------------------- packed weights for the fused sampler

@torch.no_grad()
def pack_wavenet(model: WaveNet, dtype: torch.dtype = torch.float32) -> WaveNetFused:
    """Pack an :class:`arkern.models.WaveNet` once for the fused kernel; dtype float32 or bfloat16."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"pack_wavenet: dtype must be float32 or bfloat16, got {dtype}")
    cfg = model.config
    L, R, S, A = cfg.num_layers, cfg.residual_channels, cfg.skip_channels, cfg.num_classes
    emb = torch.stack([model.embed_prev.weight, model.embed_cur.weight]).to(torch.float32).contiguous()
    w_dil, b_dil, w_rs, b_rs = [], [], [], []
    for i in range(L):
        conv = model.dilated[i]
        w = torch.cat([conv.weight[:, :, 0], conv.weight[:, :, 1]], dim=1)  # (2R, 2R) on [x(t-d); x(t)]
        w_dil.append(pack_matrix(w, [R, R], dtype))
        b_dil.append(pad_vector(conv.bias, [R, R]))
        has_res = i < len(model.res)
        wr = model.res[i].weight[:, :, 0] if has_res else conv.weight.new_zeros(R, R)
        br = model.res[i].bias if has_res else conv.bias.new_zeros(R)
        w_rs.append(pack_matrix(torch.cat([wr, model.skip[i].weight[:, :, 0]]), [R, S], dtype))
        b_rs.append(pad_vector(torch.cat([br, model.skip[i].bias]), [R, S]))
    return WaveNetFused(
        emb=emb, w_dil=torch.cat(w_dil), b_dil=torch.stack(b_dil), w_rs=torch.cat(w_rs), b_rs=torch.stack(b_rs),
        w_out=pack_matrix(model.out.weight[:, :, 0], None, dtype), b_out=pad_vector(model.out.bias, [A]),
        w_end=pack_matrix(model.end.weight[:, :, 0], None, dtype), b_end=pad_vector(model.end.bias, [A]),
        dilations=list(model.dilations), residual_channels=R, skip_channels=S, num_classes=A)


def packed_weights(model: WaveNet, dtype: torch.dtype = torch.float32) -> WaveNetFused:
    """The model packed for ``arkern.ops.wavenet_generate``, re-packed only when a parameter changed."""
    return cached_pack(model, ("wavenet", dtype), lambda: pack_wavenet(model, dtype))
