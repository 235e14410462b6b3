"""Recipe of the bundled "tones" model: a small WaveNet on a synthetic melody at 8 kHz.

The data is generated here (no download): notes of the A minor pentatonic scale (220-440 Hz), each 1/8 or
1/4 s, a fundamental with two harmonics, 10 ms attack and 15 ms release, stepping up or down the scale by
one or two notes at random. The model is μ-law (256 classes) with 10 layers of dilations 1..512 (a receptive
field of 1025 samples = 128 ms, a few periods of every note).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from arkern.audio import mulaw_encode
from arkern.models.wavenet import WaveNet, WaveNetConfig
from arkern.pretrained import save
from arkern.training import fit

SAMPLE_RATE = 8000
SCALE_HZ = (220.00, 261.63, 293.66, 329.63, 392.00, 440.00)  # A3 C4 D4 E4 G4 A4
NOTE_SECONDS = (0.125, 0.25)
HARMONICS = (1.0, 0.4, 0.2)  # amplitudes of f, 2f, 3f
AMPLITUDE = 0.5
ATTACK, RELEASE = 0.010, 0.015  # seconds
CONFIG = WaveNetConfig(num_layers=10, residual_channels=32, skip_channels=64, num_classes=256, max_dilation=512)
TRAIN_SECONDS, VALID_SECONDS = 64.0, 4.0
CROP, BATCH, LR = 2048, 8, 3e-3
JITTER = 1  # inputs off by up to ±JITTER classes, clean targets: sampling tolerates its own small errors
EPOCHS = 14


def melody(seconds: float, *, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A random pentatonic melody: (round(seconds * sample_rate),) float32 audio in [-AMPLITUDE, AMPLITUDE]."""
    if seconds <= 0 or sample_rate < 1:
        raise ValueError(f"melody: need seconds > 0 and sample_rate >= 1, got {seconds}, {sample_rate}")
    g = torch.Generator().manual_seed(seed)
    total = round(seconds * sample_rate)
    note = int(torch.randint(len(SCALE_HZ), (1,), generator=g))
    attack, release = round(ATTACK * sample_rate), round(RELEASE * sample_rate)
    parts, n = [], 0
    while n < total:
        length = round(NOTE_SECONDS[int(torch.randint(len(NOTE_SECONDS), (1,), generator=g))] * sample_rate)
        t = torch.arange(length, dtype=torch.float64) / sample_rate
        f = SCALE_HZ[note]
        tone = sum(a * torch.sin(2 * math.pi * k * f * t) for k, a in enumerate(HARMONICS, 1)) / sum(HARMONICS)
        env = torch.ones(length, dtype=torch.float64)
        env[:attack] = torch.linspace(0, 1, attack, dtype=torch.float64)
        env[length - release:] = torch.linspace(1, 0, release, dtype=torch.float64)
        parts.append(AMPLITUDE * tone * env)
        n += length
        step = (-2, -1, 1, 2)[int(torch.randint(4, (1,), generator=g))]
        note = min(max(note + step, 0), len(SCALE_HZ) - 1)
    return torch.cat(parts)[:total].to(torch.float32)


def train(out: Path, *, epochs: int = EPOCHS, seed: int = 0, log: Callable[[str], None] = print
          ) -> tuple[Path, Path]:
    """Train the tones WaveNet and write ``out/tones.json`` + ``out/tones.safetensors``."""
    torch.manual_seed(seed)
    data = mulaw_encode(melody(TRAIN_SECONDS, seed=seed), CONFIG.num_classes)
    valid = mulaw_encode(melody(VALID_SECONDS, seed=seed + 1), CONFIG.num_classes)
    model = WaveNet(CONFIG)
    steps = len(data) // (CROP * BATCH)
    g = torch.Generator().manual_seed(seed)

    def batches(epoch: int) -> Iterator[torch.Tensor]:
        for _ in range(steps):
            starts = torch.randint(len(data) - CROP, (BATCH,), generator=g)
            yield torch.stack([data[s:s + CROP] for s in starts.tolist()])

    def loss_fn(y: torch.Tensor) -> torch.Tensor:
        noisy = y
        if JITTER:
            noisy = (y + torch.randint(-JITTER, JITTER + 1, y.shape, generator=g)).clamp(0, CONFIG.num_classes - 1)
        return F.cross_entropy(model(noisy), y)

    def evaluate() -> dict[str, float]:
        y = valid[: (len(valid) // CROP) * CROP].reshape(-1, CROP)
        return {"valid_bits": float(F.cross_entropy(model(y), y)) / math.log(2.0)}

    log(f"tones: WaveNet {CONFIG}, {sum(p.numel() for p in model.parameters())} parameters; "
        f"{TRAIN_SECONDS:.0f} s of melody at {SAMPLE_RATE} Hz, {epochs} epochs of {steps} steps "
        f"({BATCH} x {CROP} samples), {torch.get_num_threads()} threads")
    figures = fit(model, loss_fn, batches, epochs=epochs, steps_per_epoch=steps, lr=LR, log=log, evaluate=evaluate)
    meta = {
        "kind": "audio", "sample_rate": SAMPLE_RATE, "encoding": "mulaw",
        "description": "WaveNet on a synthetic A minor pentatonic melody (arkern.training.tones.melody)",
        "data": {"scale_hz": list(SCALE_HZ), "note_seconds": list(NOTE_SECONDS), "harmonics": list(HARMONICS),
                 "amplitude": AMPLITUDE, "train_seconds": TRAIN_SECONDS, "seed": seed},
        "training": {"recipe": "arkern train tones", "epochs": epochs, "steps_per_epoch": steps, "batch": BATCH,
                     "crop": CROP, "lr": LR, "input_jitter": JITTER, "threads": torch.get_num_threads(),
                     "torch": torch.__version__,
                     **{k: round(v, 4) for k, v in figures.items()}},
    }
    json_path, weights_path = save(model, out / "tones", meta=meta)
    log(f"wrote {json_path} and {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB)")
    return json_path, weights_path
