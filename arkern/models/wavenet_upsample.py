"""Local-conditioning upsamplers of the WaveNet family: frames (B, C, frames) -> one feature vector per sample.

Four variants (``WaveNetConfig.upsample``), each a small network of the model's own:

- ``"nearest"``: every frame repeated ``cond_hop`` times (arkern's native models);
- ``"convt2d"`` (wavenet_vocoder 0.1.1, ``upsample_conv.N``): per scale s a ConvTranspose2d(1, 1, (k_f, s),
  stride (1, s), padding ((k_f - 1) / 2, 0)) over the (C, time) plane, then ReLU. A frame's output samples
  depend on that frame only;
- ``"stretch_conv2d"`` (wavenet_vocoder master, ``upsample_net.*``): a Conv1d(C, C, 2·cin_pad + 1)
  without padding or bias (``conv_in``; upstream's ConvInUpsampleNetwork, optional), then per scale s a
  nearest stretch by s along time and a Conv2d(1, 1, (k_f, 2s + 1)) with padding ((k_f - 1) / 2, s) and no
  bias, optionally followed by ReLU. Without conv_in the outer ``cin_pad`` frames on each side are cut
  after upsampling (upstream's ``indent``);
- ``"convt1d"`` (nv-wavenet): one ConvTranspose1d(C, C, window, stride), truncated to the samples asked for.

:meth:`WaveNetUpsampler.window` computes the features of samples [start, stop) from only the frames that
reach them (plus each network's receptive field), so a sampler computes conditioning chunk by chunk and
never holds it for the whole utterance; the result equals the slice of the whole-utterance computation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLERS = ("nearest", "convt2d", "stretch_conv2d", "convt1d")


class WaveNetUpsampler(nn.Module):
    """The upsampling network of one WaveNet config (see the module docstring).

    Parameters (by variant): convt2d: ``layers.i`` ConvTranspose2d per scale; stretch_conv2d: ``conv_in``
    (unless conv_in=False) and ``layers.i`` Conv2d per scale; convt1d: ``layers.0``.
    """

    def __init__(self, kind: str, channels: int, *, hop: int = 1, scales: tuple[int, ...] = (),
                 freq_kernel: int = 1, cin_pad: int = 0, conv_in: bool = True, activation: str = "none",
                 window: int = 0) -> None:
        super().__init__()
        if kind not in UPSAMPLERS:
            raise ValueError(f"WaveNet: upsample must be one of {UPSAMPLERS}, got {kind!r}")
        if activation not in ("none", "relu"):
            raise ValueError(f"WaveNet: upsample_activation must be 'none' or 'relu', got {activation!r}")
        if kind in ("convt2d", "stretch_conv2d"):
            if not scales or any(int(s) < 1 for s in scales):
                raise ValueError(f"WaveNet: upsample={kind!r} needs upsample_scales, ints >= 1, got {scales!r}")
            if freq_kernel < 1 or freq_kernel % 2 == 0:
                raise ValueError(f"WaveNet: freq_axis_kernel_size must be odd and >= 1, got {freq_kernel}")
            hop = math.prod(scales)
        if kind == "convt1d":
            if window < 1 or hop < 1:
                raise ValueError(f"WaveNet: upsample='convt1d' needs upsample_window >= 1 and cond_hop (the "
                                 f"stride) >= 1, got {window} and {hop}")
        if cin_pad < 0:
            raise ValueError(f"WaveNet: cin_pad must be >= 0, got {cin_pad}")
        self.kind, self.channels, self.hop, self.scales = kind, channels, hop, tuple(int(s) for s in scales)
        self.cin_pad, self.convt_window, self.activation = cin_pad, window, activation
        self.has_conv_in = kind == "stretch_conv2d" and conv_in
        pad_f = (freq_kernel - 1) // 2
        self.layers = nn.ModuleList()
        if kind == "convt2d":
            for s in self.scales:
                self.layers.append(nn.ConvTranspose2d(1, 1, (freq_kernel, s), stride=(1, s), padding=(pad_f, 0)))
        elif kind == "stretch_conv2d":
            self.conv_in = nn.Conv1d(channels, channels, 2 * cin_pad + 1, bias=False) if self.has_conv_in else None
            for s in self.scales:
                self.layers.append(nn.Conv2d(1, 1, (freq_kernel, 2 * s + 1), padding=(pad_f, s), bias=False))
        elif kind == "convt1d":
            self.layers.append(nn.ConvTranspose1d(channels, channels, window, stride=hop))
        # sample p of the output belongs to input frame p // hop + offset; a window of samples needs `lead`
        # frames before and `lag` frames after those (the networks' receptive fields, in frames)
        self.offset = cin_pad if kind == "stretch_conv2d" and not self.has_conv_in else 0
        self.lead = self.lag = 0
        if kind == "stretch_conv2d":
            self.lead = len(self.scales) + 1  # each scale's conv reaches s samples = at most one frame
            self.lag = self.lead + (2 * cin_pad if self.has_conv_in else 0)
        elif kind == "convt1d":
            self.lead = -(-window // hop)

    def samples_available(self, frames: int) -> int:
        """How many samples `frames` input frames condition."""
        if self.kind == "convt1d":
            return (frames - 1) * self.hop + self.convt_window if frames > 0 else 0
        return max(0, frames - 2 * self.cin_pad) * self.hop if self.kind == "stretch_conv2d" else frames * self.hop

    def _run(self, c: torch.Tensor) -> torch.Tensor:
        """The network on frames (B, C, f) -> (B, C, samples) (before any trimming)."""
        if self.kind == "nearest":
            return c.repeat_interleave(self.hop, dim=2)
        if self.kind == "convt1d":
            return self.layers[0](c)
        if self.has_conv_in:
            c = self.conv_in(c)
        x = c.unsqueeze(1)
        for conv, s in zip(self.layers, self.scales):
            if self.kind == "stretch_conv2d":
                x = x.repeat_interleave(s, dim=3)
            x = conv(x)
            if self.kind == "convt2d" or self.activation == "relu":
                x = F.relu(x)
        return x.squeeze(1)

    def forward(self, c: torch.Tensor, length: int) -> torch.Tensor:
        """Features of samples [0, length): c (B, C, frames) -> (B, C, length)."""
        return self.window(c, 0, length)

    def window(self, c: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Features of samples [start, stop) from the frames that reach them: (B, C, frames) -> (B, C, n)."""
        frames = c.shape[2]
        if stop <= start:
            return c.new_zeros(c.shape[0], c.shape[1], 0)
        f0 = max(0, start // self.hop + self.offset - self.lead)
        f1 = min(frames, (stop - 1) // self.hop + self.offset + 1 + self.lag)
        out = self._run(c[:, :, f0:f1])
        base = (f0 - self.offset) * self.hop  # absolute sample of out[..., 0]
        return out[:, :, start - base:stop - base]
