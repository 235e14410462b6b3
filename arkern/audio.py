"""μ-law companding and 16-bit PCM WAV files (standard library `wave`), for WaveNet samples."""

from __future__ import annotations

import math
import wave

import torch


def mulaw_encode(x: torch.Tensor, classes: int = 256) -> torch.Tensor:
    """Audio in [-1, 1] (any shape, float) -> μ-law classes in [0, classes) int64 (μ = classes - 1)."""
    if classes < 2:
        raise ValueError(f"mulaw_encode: classes must be >= 2, got {classes}")
    mu = classes - 1
    x = x.to(torch.float64).clamp(-1.0, 1.0)
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.round((y + 1.0) / 2.0 * mu).to(torch.int64).clamp(0, mu)


def mulaw_decode(q: torch.Tensor, classes: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """μ-law classes (int, any shape) -> audio in [-1, 1] of `dtype`; inverse of :func:`mulaw_encode`."""
    if classes < 2:
        raise ValueError(f"mulaw_decode: classes must be >= 2, got {classes}")
    mu = classes - 1
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > mu):
        raise ValueError(f"mulaw_decode: classes must be in [0, {mu}]")
    y = q.to(torch.float64) * (2.0 / mu) - 1.0
    return (torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu).to(dtype)


def write_wav(path: str, audio: torch.Tensor, sample_rate: int = 16000) -> None:
    """Write audio in [-1, 1], shape (T,) mono or (C, T), as 16-bit PCM."""
    if audio.dim() == 1:
        audio = audio.unsqueeze(0)
    if audio.dim() != 2:
        raise ValueError(f"write_wav: audio must be (T,) or (channels, T), got {tuple(audio.shape)}")
    if sample_rate < 1:
        raise ValueError(f"write_wav: sample_rate must be >= 1, got {sample_rate}")
    pcm = torch.round(audio.to(torch.float64).clamp(-1.0, 1.0) * 32767.0).to(torch.int16)
    frames = pcm.t().contiguous().numpy().astype("<i2").tobytes()
    with wave.open(path, "wb") as f:
        f.setnchannels(pcm.shape[0])
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(frames)


def read_wav(path: str) -> tuple[torch.Tensor, int]:
    """Read a 16-bit PCM WAV: ((channels, T) float32 in [-1, 1], sample_rate)."""
    import numpy as np

    with wave.open(path, "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"read_wav: only 16-bit PCM is supported, got {8 * f.getsampwidth()}-bit")
        channels, rate, n = f.getnchannels(), f.getframerate(), f.getnframes()
        data = np.frombuffer(f.readframes(n), dtype="<i2").reshape(n, channels)
    return torch.from_numpy(data.T.astype(np.float32) / 32767.0), rate
