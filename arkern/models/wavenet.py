"""The WaveNet family (docs/design.md, "Models"): one config-driven network, teacher-forced and trainable.

Per time step t the network sees the previous sample y[t-1] (the start value before the sequence): as
an embedding (``input="embedding"``; one-hot μ-law through a 1×1 conv is the same table with its bias folded
in), as the sum of embeddings of y[t-2] and y[t-1] (``"embedding2"``, arkern's native models), or as a
scalar in [-1, 1] through a 1×1 conv (``"scalar"``). Then L gated layers, layer l with dilation d_l
(doubling from 1 to max_dilation then restarting, or ``stacks`` cycles of num_layers / stacks layers),
kernel K, gate channels G = 2H:

    pre_l(t)  = Σ_k W_l[..., k] x_l(t - (K-1-k)·d_l) + b_l + cond_l(t) + glob_l             (G)
    g_l(t)    = tanh(pre_l[:H]) * sigmoid(pre_l[H:])                                        (H)
    x_{l+1}   = (x_l + W_res,l g_l + b_res,l) · residual_scale     (none after the last layer) (R)
    skip     += c_l (W_skip,l g_l + b_skip,l)                                               (S)

with c_l = 1 (``skip_scale="none"``), √(1/L) (``"sqrt_layers"``, wavenet_vocoder master) or the factors of
wavenet_vocoder's ``legacy`` skips = (skips + h)·√0.5 after every layer but the first (``"legacy"``). The
head is ``W_end relu(W_out relu(skip) + b_out) + b_end`` (S -> end_channels -> head channels), read by
:mod:`arkern.wavenet_heads` (softmax, mixture of logistics, Gaussian). x_l at negative times is
zero. Local conditioning (B, cond_channels, frames) is upsampled to one vector per sample by the model's
own network (:mod:`arkern.models.wavenet_upsample`) and projected per layer to G; global conditioning (a
(B, G_in) vector, or a speaker id through an embedding) is projected per layer to G and added at every step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from arkern import wavenet_heads as heads
from arkern.backends import cpu_isas
from arkern.models._packcache import cached_pack
from arkern.models.wavenet_upsample import UPSAMPLERS, WaveNetUpsampler
from arkern.ops.causal_conv1d import causal_conv1d
from arkern.ops.wavenet_decode import WaveNetFused, pack_matrix, pack_tiles, pad_vector
from arkern.ops.wavenet_family_decode import WaveNetFamilyFused

INPUTS = ("embedding2", "embedding", "scalar")
SKIP_SCALES = ("none", "legacy", "sqrt_layers")


@dataclass(frozen=True)
class WaveNetConfig:
    """Sizes and options of a WaveNet. Defaults: the nv-wavenet medium configuration (arkern's native one)."""

    num_layers: int = 20
    residual_channels: int = 64
    skip_channels: int = 128
    num_classes: int = 256  # softmax: classes; logistic_mixture: bins of the likelihood over [-1, 1]
    max_dilation: int = 512
    cond_channels: int = 0  # local conditioning features per frame (0: none)
    cond_hop: int = 1  # samples per conditioning frame (nearest / convt1d stride; else prod(upsample_scales))
    global_channels: int = 0  # global conditioning vector size (0: none)
    stacks: int = 0  # > 0: dilations 2**(l % (num_layers // stacks)) instead of the max_dilation cycle
    kernel_size: int = 2
    gate_channels: int = 0  # 0: 2 * residual_channels
    end_channels: int = 0  # 0: the head's output channels
    input: str = "embedding2"
    head: str = "softmax"
    num_mixtures: int = 0  # logistic_mixture components
    log_scale_min: float = -7.0
    start_class: int = -1  # class before the sequence (embedding inputs); -1: num_classes // 2
    bias: bool = True  # biases of the input, dilated, residual and skip convs
    head_bias: bool = True
    cond_bias: bool = True
    global_bias: bool = False
    residual_scale: float = 1.0
    skip_scale: str = "none"
    speakers: int = 0  # > 0: global conditioning is a speaker id, embedded to global_channels
    upsample: str = "nearest"
    upsample_scales: tuple[int, ...] = ()
    freq_axis_kernel_size: int = 1
    cin_pad: int = 0
    upsample_conv_in: bool = True
    upsample_activation: str = "none"
    upsample_window: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "upsample_scales", tuple(int(s) for s in self.upsample_scales))

    @property
    def gates(self) -> int:
        """G, the dilated convs' output channels (tanh half + sigmoid half)."""
        return self.gate_channels or 2 * self.residual_channels

    @property
    def out_channels(self) -> int:
        """Channels of the head's output."""
        return heads.head_channels(self.head, self.num_classes, self.num_mixtures)

    @property
    def hop(self) -> int:
        """Samples per local-conditioning frame."""
        return math.prod(self.upsample_scales) if self.upsample in ("convt2d", "stretch_conv2d") else self.cond_hop

    def dilations(self) -> list[int]:
        """Dilation of every layer: 1, 2, 4, ... restarting after max_dilation (or every num_layers / stacks)."""
        cycle = self.num_layers // self.stacks if self.stacks else max(1, self.max_dilation.bit_length())
        return [2 ** (i % cycle) for i in range(self.num_layers)]

    def skip_factors(self) -> list[float]:
        """c_l, the factor of layer l's skip output in the final skip sum."""
        L = self.num_layers
        if self.skip_scale == "legacy":
            return [math.sqrt(0.5) ** (L - max(i, 1)) for i in range(L)]
        if self.skip_scale == "sqrt_layers":
            return [math.sqrt(1.0 / L)] * L
        return [1.0] * L

    def check(self) -> None:
        """Raise ValueError naming the field for an inconsistent config."""
        for name in ("num_layers", "residual_channels", "skip_channels", "max_dilation", "cond_hop"):
            if getattr(self, name) < 1:
                raise ValueError(f"WaveNet: {name} must be >= 1, got {getattr(self, name)}")
        choices = {"input": INPUTS, "head": heads.HEADS, "skip_scale": SKIP_SCALES, "upsample": UPSAMPLERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"WaveNet: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.num_classes < 2:
            raise ValueError(f"WaveNet: num_classes must be >= 2, got {self.num_classes}")
        if self.kernel_size < 2:
            raise ValueError(f"WaveNet: kernel_size must be >= 2, got {self.kernel_size}")
        if self.gates < 2 or self.gates % 2:
            raise ValueError(f"WaveNet: gate_channels must be even and >= 2, got {self.gate_channels}")
        if self.stacks < 0 or (self.stacks and self.num_layers % self.stacks):
            raise ValueError(f"WaveNet: stacks must divide num_layers ({self.num_layers}), got {self.stacks}")
        if self.head == "logistic_mixture" and self.num_mixtures < 1:
            raise ValueError(f"WaveNet: head='logistic_mixture' needs num_mixtures >= 1, got {self.num_mixtures}")
        if (self.input == "scalar") != (self.head != "softmax"):
            raise ValueError(f"WaveNet: input={self.input!r} with head={self.head!r}: scalar input goes with the "
                             f"continuous heads, embedding inputs with softmax (a softmax model fed scalars is an "
                             f"embedding table of its classes)")
        if not -1 <= self.start_class < self.num_classes:
            raise ValueError(f"WaveNet: start_class must be -1 or in [0, {self.num_classes}), got {self.start_class}")
        if self.speakers < 0 or (self.speakers and not self.global_channels):
            raise ValueError(f"WaveNet: speakers={self.speakers} needs global_channels > 0 (the embedding size)")
        if not (self.residual_scale > 0 and math.isfinite(self.residual_scale)):
            raise ValueError(f"WaveNet: residual_scale must be a positive number, got {self.residual_scale}")


class WaveNet(nn.Module):
    """``forward(y, cond, gcond)`` gives the teacher-forced head outputs of every position (module docstring)."""

    def __init__(self, config: WaveNetConfig | None = None, **overrides: object) -> None:
        super().__init__()
        cfg = config or WaveNetConfig()
        if overrides:
            unknown = set(overrides) - {f.name for f in fields(WaveNetConfig)}
            if unknown:
                raise ValueError(f"WaveNet: unknown config fields {sorted(unknown)}")
            cfg = WaveNetConfig(**{**asdict(cfg), **overrides})
        cfg.check()
        self.config = cfg
        L, R, S, A, G = cfg.num_layers, cfg.residual_channels, cfg.skip_channels, cfg.num_classes, cfg.gates
        H, K, n_out = G // 2, cfg.kernel_size, cfg.out_channels
        E = cfg.end_channels or n_out
        self.dilations = cfg.dilations()
        if cfg.input == "embedding2":
            self.embed_prev = nn.Embedding(A, R)  # sample t-2
        if cfg.input != "scalar":
            self.embed_cur = nn.Embedding(A, R)  # sample t-1
        else:
            self.input_proj = nn.Linear(1, R, bias=cfg.bias)
        self.dilated = nn.ModuleList(nn.Conv1d(R, G, K, bias=cfg.bias) for _ in range(L))
        self.res = nn.ModuleList(nn.Conv1d(H, R, 1, bias=cfg.bias) for _ in range(L - 1))
        self.skip = nn.ModuleList(nn.Conv1d(H, S, 1, bias=cfg.bias) for _ in range(L))
        self.out = nn.Conv1d(S, E, 1, bias=cfg.head_bias)
        self.end = nn.Conv1d(E, n_out, 1, bias=cfg.head_bias)
        self.cond_proj = nn.Linear(cfg.cond_channels, L * G, bias=cfg.cond_bias) if cfg.cond_channels else None
        self.global_proj = (nn.Linear(cfg.global_channels, L * G, bias=cfg.global_bias)
                            if cfg.global_channels else None)
        with torch.no_grad():  # keep deep stacks of random layers in a useful range
            for conv in self.dilated:
                conv.weight.mul_(1.0 / 2**0.5)
        self.speaker_embed = nn.Embedding(cfg.speakers, cfg.global_channels) if cfg.speakers else None
        self.upsampler = (WaveNetUpsampler(cfg.upsample, cfg.cond_channels, hop=cfg.cond_hop,
                                           scales=cfg.upsample_scales, freq_kernel=cfg.freq_axis_kernel_size,
                                           cin_pad=cfg.cin_pad, conv_in=cfg.upsample_conv_in,
                                           activation=cfg.upsample_activation, window=cfg.upsample_window)
                          if cfg.cond_channels else None)

    @property
    def start_value(self) -> int | float:
        """The sample assumed before the sequence: a class (embedding inputs) or 0.0 (scalar input)."""
        cfg = self.config
        if cfg.input == "scalar":
            return 0.0
        return cfg.start_class if cfg.start_class >= 0 else cfg.num_classes // 2

    @property
    def dtype(self) -> torch.dtype:
        return self.out.weight.dtype

    # ------------------------------------------------------------ conditioning
    def check_local(self, cond: torch.Tensor | None, batch: int | None = None, length: int | None = None) -> None:
        """Validate local conditioning (B, cond_channels, frames) for `batch` rows of `length` samples."""
        cfg = self.config
        if self.cond_proj is None:
            if cond is not None:
                raise ValueError("WaveNet: condition given but the model has no local conditioning")
            return
        if cond is None:
            raise ValueError(f"WaveNet: the model needs a local condition (B, {cfg.cond_channels}, frames)")
        if not isinstance(cond, torch.Tensor) or cond.dim() != 3 or cond.shape[1] != cfg.cond_channels:
            got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"WaveNet: condition must be (B, {cfg.cond_channels}, frames), got {got}")
        if batch is not None and cond.shape[0] != batch:
            raise ValueError(f"WaveNet: condition has batch {cond.shape[0]}, expected {batch}")
        if length is None:
            return
        if cfg.upsample == "nearest":
            need = -(-length // cfg.cond_hop)
            if cond.shape[2] != need:
                raise ValueError(f"WaveNet: condition must have {need} frames for {length} samples at "
                                 f"cond_hop={cfg.cond_hop}, got {cond.shape[2]}")
        elif self.upsampler.samples_available(cond.shape[2]) < length:
            raise ValueError(f"WaveNet: condition has {cond.shape[2]} frames, which condition "
                             f"{self.upsampler.samples_available(cond.shape[2])} samples at hop {cfg.hop}, fewer "
                             f"than the {length} samples requested")

    def local_window(self, cond: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Projected local conditioning of samples [start, stop): (B, stop - start, L, G), from the frames
        that reach them only (chunk by chunk while sampling)."""
        feats = self.upsampler.window(cond.to(self.dtype), start, stop)  # (B, C, n)
        L, G = self.config.num_layers, self.config.gates
        return self.cond_proj(feats.transpose(1, 2)).reshape(cond.shape[0], stop - start, L, G)

    def local_frames(self, cond: torch.Tensor, f0: int, f1: int) -> torch.Tensor:
        """Nearest upsampling only: frames [f0, f1) projected, (B, f1 - f0, L, G); frame f covers cond_hop samples."""
        L, G = self.config.num_layers, self.config.gates
        return self.cond_proj(cond[:, :, f0:f1].transpose(1, 2).to(self.dtype)).reshape(cond.shape[0], -1, L, G)

    def global_bias(self, gcond: torch.Tensor | None, batch: int | None = None) -> torch.Tensor | None:
        """Validate and project global conditioning -> (B, L, G) per-layer additions, or None.

        gcond: (B, global_channels) vectors, or with ``speakers`` (B,) / (B, 1) int64 speaker ids."""
        cfg = self.config
        if self.global_proj is None:
            if gcond is not None:
                raise ValueError("WaveNet: global condition given but the model has no global conditioning")
            return None
        if self.speaker_embed is not None:
            if (not isinstance(gcond, torch.Tensor) or gcond.dtype != torch.int64
                    or gcond.dim() not in (1, 2) or (gcond.dim() == 2 and gcond.shape[1] != 1)):
                got = f"{gcond.dtype} {tuple(gcond.shape)}" if isinstance(gcond, torch.Tensor) else gcond
                raise ValueError(f"WaveNet: global condition must be int64 speaker ids (B,), got {got}")
            ids = gcond.reshape(-1)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= cfg.speakers):
                raise ValueError(f"WaveNet: speaker id out of range: got ids in [{int(ids.min())}, "
                                 f"{int(ids.max())}], the model has {cfg.speakers} speakers [0, {cfg.speakers - 1}]")
            vec = self.speaker_embed(ids)
        else:
            if not isinstance(gcond, torch.Tensor) or gcond.dim() != 2 or gcond.shape[1] != cfg.global_channels:
                got = None if gcond is None else tuple(gcond.shape)
                raise ValueError(f"WaveNet: global condition must be (B, {cfg.global_channels}), got {got}")
            vec = gcond.to(self.dtype)
        if batch is not None and vec.shape[0] != batch:
            raise ValueError(f"WaveNet: global condition has batch {vec.shape[0]}, expected {batch}")
        return self.global_proj(vec).reshape(vec.shape[0], cfg.num_layers, cfg.gates)

    def conditioning(self, cond: torch.Tensor | None = None, gcond: torch.Tensor | None = None,
                     batch: int | None = None, length: int | None = None
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Validate and project the conditioning of a whole run (for tests and short runs; samplers use
        :meth:`local_window` chunk by chunk).

        Returns:
            (local, global): local (B, frames, L, G) per frame of cond_hop samples (nearest upsampling) or
            (B, length, L, G) per sample (learned upsampling, ``length`` required), or None; global (B, L, G).
        """
        self.check_local(cond, batch, length)
        return self.local_all(cond, length), self.global_bias(gcond, batch)

    def local_all(self, cond: torch.Tensor | None, length: int | None) -> torch.Tensor | None:
        """Projected local conditioning of a whole (checked) run: per frame (nearest) or per sample."""
        if cond is None:
            return None
        if self.config.upsample == "nearest":
            return self.local_frames(cond, 0, cond.shape[2])
        if length is None:
            raise ValueError("WaveNet: conditioning with a learned upsampler needs the length")
        return self.local_window(cond, 0, length)

    # ------------------------------------------------------------ the network
    def embed(self, older: torch.Tensor, newer: torch.Tensor) -> torch.Tensor:
        """Input of the first layer from y[t-2] (older) and y[t-1] (newer), both (...) -> (..., R)."""
        if self.config.input == "scalar":
            return self.input_proj(newer.to(self.dtype).unsqueeze(-1))
        x = self.embed_cur(newer)
        return x + self.embed_prev(older) if self.config.input == "embedding2" else x

    def head(self, skip: torch.Tensor) -> torch.Tensor:
        """skip (B, S, T) summed skip outputs -> head outputs (B, out_channels, T)."""
        return self.end(F.relu(self.out(F.relu(skip))))

    def check_samples(self, y: torch.Tensor, who: str = "WaveNet") -> None:
        """y (B, T): int64 classes in [0, num_classes) (softmax) or floats (continuous heads)."""
        cfg = self.config
        if not isinstance(y, torch.Tensor) or y.dim() != 2:
            raise ValueError(f"{who}: y must be a (B, T) tensor, got "
                             f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
        if cfg.head == "softmax":
            if y.dtype != torch.int64:
                raise ValueError(f"{who}: y must be int64 classes for a softmax head, got {y.dtype}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= cfg.num_classes):
                raise ValueError(f"{who}: y holds classes outside [0, {cfg.num_classes})")
        elif not y.is_floating_point():
            raise ValueError(f"{who}: y must be float samples in [-1, 1] for a {cfg.head} head, got {y.dtype}")

    def forward(self, y: torch.Tensor, cond: torch.Tensor | None = None,
                gcond: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced head outputs; see :meth:`forward_with_layer_inputs`."""
        return self.forward_with_layer_inputs(y, cond, gcond)[0]

    def forward_with_layer_inputs(self, y: torch.Tensor, cond: torch.Tensor | None = None,
                                  gcond: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher-forced head outputs and every layer's input sequence.

        Args:
            y: (B, T) int64 classes (softmax head) or float samples in [-1, 1] (continuous heads).
            cond: (B, cond_channels, frames) local conditioning covering T samples, if the model has it.
            gcond: global conditioning, if the model has it (see :meth:`global_bias`).

        Returns:
            (out (B, out_channels, T), inputs): position t of out is the distribution of y[:, t] given
            y[:, :t]; inputs[l] (B, R, T) is the input sequence of layer l (what its ring buffer caches).
        """
        self.check_samples(y)
        B, T = y.shape
        cfg = self.config
        self.check_local(cond, B, T)
        local = None if cond is None else self.local_window(cond, 0, T)  # (B, T, L, G)
        glob = self.global_bias(gcond, B)
        start = torch.full((B, 2), self.start_value, dtype=y.dtype, device=y.device)
        ypad = torch.cat([start, y], dim=1)
        x = self.embed(ypad[:, :T], ypad[:, 1:T + 1]).transpose(1, 2)  # (B, R, T)
        H = cfg.gates // 2
        skip = 0
        inputs = []
        for i, (conv, d, c) in enumerate(zip(self.dilated, self.dilations, cfg.skip_factors())):
            inputs.append(x)
            pre = causal_conv1d(x, conv.weight, conv.bias, dilation=d)
            if local is not None:
                pre = pre + local[:, :, i].transpose(1, 2)
            if glob is not None:
                pre = pre + glob[:, i].unsqueeze(-1)
            g = torch.tanh(pre[:, :H]) * torch.sigmoid(pre[:, H:])
            s = self.skip[i](g)
            skip = skip + (s * c if c != 1.0 else s)
            if i < len(self.res):
                x = x + self.res[i](g)
                if cfg.residual_scale != 1.0:
                    x = x * cfg.residual_scale
        return self.head(skip), inputs

    def log_prob(self, y: torch.Tensor, condition: object = None) -> torch.Tensor:
        """log p(y) in nats per row, (B, T) -> (B,), under the model's own sampling process (sample t predicted
        from y[:t], the start value before the sequence).

        condition: a local (B, C, frames) tensor, or {"local": ..., "global": ...}.
        """
        local, glob = split_condition(condition)
        out = self(y, local, glob)
        cfg = self.config
        yy = y if cfg.head == "softmax" else y.to(out.dtype)
        return heads.log_prob(cfg.head, out, yy, num_classes=cfg.num_classes,
                              log_scale_min=cfg.log_scale_min).sum(1)


def split_condition(condition: object) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A WaveNet condition (None, a local tensor, or {"local": ..., "global": ...}) -> (local, global)."""
    if condition is None or isinstance(condition, torch.Tensor):
        return condition, None
    if isinstance(condition, dict) and set(condition) <= {"local", "global"}:
        return condition.get("local"), condition.get("global")
    raise TypeError("WaveNet: condition must be a (B, C, frames) tensor or a dict with keys 'local'/'global'")


# ---------------------------------------------------------------- packed weights for the fused sampler

def fused_unsupported(cfg: WaveNetConfig) -> str | None:
    """Why the nv-wavenet-architecture op (``wavenet_generate``, with its Triton and CUDA backends) cannot run
    this config (None: it can); every config runs on ``wavenet_family_generate``."""
    why = []
    if cfg.kernel_size != 2:
        why.append(f"kernel_size {cfg.kernel_size} (the kernel has 2 taps)")
    if cfg.head != "softmax":
        why.append(f"the {cfg.head} head (the kernel draws softmax classes)")
    if cfg.gates != 2 * cfg.residual_channels:
        why.append(f"gate_channels {cfg.gates} != 2 x residual_channels")
    if (cfg.end_channels or cfg.out_channels) != cfg.out_channels:
        why.append(f"end_channels {cfg.end_channels} != num_classes")
    if not why:
        return None
    return "the fused C++ sampler covers kernel 2, softmax heads, gate_channels = 2R and end_channels = num_classes; " \
           "this model has " + ", ".join(why)


@torch.no_grad()
def pack_wavenet(model: WaveNet, dtype: torch.dtype = torch.float32) -> WaveNetFused:
    """Pack an :class:`arkern.models.WaveNet` once for the fused kernel; dtype float32 or bfloat16 (the bfloat16
    precision; with its AMX tile copy when this CPU has AMX, see :func:`arkern.ops.wavenet_decode.pack_tiles`).

    The scalings are folded into the weights: the kernel's layer inputs are x'_l = x_l / a^l (a the
    residual scale), so layer l's dilated weights are multiplied by a^l and its residual conv by a^-l; skip
    conv l is multiplied by its skip factor c_l; missing biases are zeros.
    """
    if dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"pack_wavenet: dtype must be float32 or bfloat16, got {dtype}")
    cfg = model.config
    why = fused_unsupported(cfg)
    if why:
        raise ValueError(f"pack_wavenet: {why}")
    R, S, A = cfg.residual_channels, cfg.skip_channels, cfg.num_classes
    f32 = dict(dtype=torch.float32, device=model.out.weight.device)
    cur = model.embed_cur.weight.to(torch.float32)
    prev = model.embed_prev.weight.to(torch.float32) if cfg.input == "embedding2" else torch.zeros_like(cur)
    emb = torch.stack([prev, cur]).contiguous()

    def bias(conv: nn.Module, n: int) -> torch.Tensor:
        return conv.bias.to(torch.float32) if conv.bias is not None else torch.zeros(n, **f32)

    w_dil, b_dil, w_rs, b_rs = [], [], [], []
    for i, c in enumerate(cfg.skip_factors()):
        conv = model.dilated[i]
        scale = cfg.residual_scale ** i
        w = torch.cat([conv.weight[:, :, 0], conv.weight[:, :, 1]], dim=1).to(torch.float32) * scale
        w_dil.append(pack_matrix(w, [R, R], dtype))
        b_dil.append(pad_vector(bias(conv, 2 * R), [R, R]))
        has_res = i < len(model.res)
        wr = model.res[i].weight[:, :, 0].to(torch.float32) / scale if has_res else torch.zeros(R, R, **f32)
        br = bias(model.res[i], R) / scale if has_res else torch.zeros(R, **f32)
        ws = model.skip[i].weight[:, :, 0].to(torch.float32) * c
        w_rs.append(pack_matrix(torch.cat([wr, ws]), [R, S], dtype))
        b_rs.append(pad_vector(torch.cat([br, bias(model.skip[i], S) * c]), [R, S]))
    packed = WaveNetFused(
        emb=emb, w_dil=torch.cat(w_dil), b_dil=torch.stack(b_dil), w_rs=torch.cat(w_rs), b_rs=torch.stack(b_rs),
        w_out=pack_matrix(model.out.weight[:, :, 0], None, dtype), b_out=pad_vector(bias(model.out, A), [A]),
        w_end=pack_matrix(model.end.weight[:, :, 0], None, dtype), b_end=pad_vector(bias(model.end, A), [A]),
        dilations=list(model.dilations), residual_channels=R, skip_channels=S, num_classes=A)
    if dtype == torch.bfloat16 and cpu_isas()["amx"] is None:
        packed.tiles = pack_tiles(packed)
    return packed


def packed_weights(model: WaveNet, dtype: torch.dtype = torch.float32) -> WaveNetFused:
    """The model packed for ``arkern.ops.wavenet_generate``, re-packed only when a parameter changed."""
    return cached_pack(model, ("wavenet", dtype), lambda: pack_wavenet(model, dtype))


@torch.no_grad()
def pack_wavenet_family(model: WaveNet, dtype: torch.dtype = torch.float32) -> WaveNetFamilyFused:
    """Pack any :class:`WaveNet` for ``arkern.ops.wavenet_family_generate`` (layout:
    :mod:`arkern.reference.wavenet_family_decode`); dtype float32 or bfloat16. Scalings folded as in
    :func:`pack_wavenet`."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"pack_wavenet_family: dtype must be float32 or bfloat16, got {dtype}")
    cfg = model.config
    K, R, S, H = cfg.kernel_size, cfg.residual_channels, cfg.skip_channels, cfg.gates // 2
    n_out, A = cfg.out_channels, cfg.num_classes
    E = cfg.end_channels or n_out
    f32 = dict(dtype=torch.float32, device=model.out.weight.device)

    def bias(conv: nn.Module, n: int) -> torch.Tensor:
        return conv.bias.to(torch.float32) if conv.bias is not None else torch.zeros(n, **f32)

    if cfg.input == "scalar":
        emb = torch.stack([model.input_proj.weight[:, 0].to(torch.float32), bias(model.input_proj, R)])
    else:
        cur = model.embed_cur.weight.to(torch.float32)
        prev = model.embed_prev.weight.to(torch.float32) if cfg.input == "embedding2" else torch.zeros_like(cur)
        emb = torch.stack([prev, cur])
    w_dil, b_dil, w_rs, b_rs = [], [], [], []
    for i, c in enumerate(cfg.skip_factors()):
        conv = model.dilated[i]
        scale = cfg.residual_scale ** i
        w = conv.weight.permute(0, 2, 1).reshape(2 * H, K * R).to(torch.float32) * scale  # [x(t-(K-1)d) .. x(t)]
        w_dil.append(pack_matrix(w, [H, H], dtype))
        b_dil.append(pad_vector(bias(conv, 2 * H), [H, H]))
        has_res = i < len(model.res)
        wr = model.res[i].weight[:, :, 0].to(torch.float32) / scale if has_res else torch.zeros(R, H, **f32)
        br = bias(model.res[i], R) / scale if has_res else torch.zeros(R, **f32)
        ws = model.skip[i].weight[:, :, 0].to(torch.float32) * c
        w_rs.append(pack_matrix(torch.cat([wr, ws]), [R, S], dtype))
        b_rs.append(pad_vector(torch.cat([br, bias(model.skip[i], S) * c]), [R, S]))
    head = ("softmax", "logistic_mixture", "gaussian").index(cfg.head)
    return WaveNetFamilyFused(
        emb=emb.contiguous(), w_dil=torch.cat(w_dil), b_dil=torch.stack(b_dil), w_rs=torch.cat(w_rs),
        b_rs=torch.stack(b_rs), w_out=pack_matrix(model.out.weight[:, :, 0], None, dtype),
        b_out=pad_vector(bias(model.out, E), [E]), w_end=pack_matrix(model.end.weight[:, :, 0], None, dtype),
        b_end=pad_vector(bias(model.end, n_out), [n_out]),
        dims=[K, R, H, S, E, n_out, 1 if cfg.input == "scalar" else A, cfg.num_mixtures,
              1 if cfg.input == "scalar" else 0, head],
        dilations=list(model.dilations), log_scale_min=float(cfg.log_scale_min))


def packed_family_weights(model: WaveNet, dtype: torch.dtype = torch.float32) -> WaveNetFamilyFused:
    """:func:`pack_wavenet_family`, re-packed only when a parameter changed."""
    return cached_pack(model, ("wavenet_family", dtype), lambda: pack_wavenet_family(model, dtype))
