"""Recipe of the bundled "digits" model: a class-conditional GatedPixelCNN on scikit-learn's handwritten
digits.

Data: ``sklearn.datasets.load_digits`` (1797 images of 8x8 pixels, grey values 0..16, 10 classes; the data
ships inside scikit-learn, nothing is downloaded), quantised to 4 grey levels: level = round(v * 3 / 16).
A fixed 10% of the images (seeded) is held out to report the validation bits per pixel; the model is
trained on the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from arkern.models.gated_pixelcnn import GatedPixelCNN
from arkern.pretrained import save
from arkern.training import fit

LEVELS = 4
SHAPE = (8, 8)
MODEL_KWARGS = {"image_channels": 1, "num_classes": LEVELS, "hidden_channels": 32, "num_layers": 5,
                "kernel_size": 3, "num_labels": 10}
EPOCHS, BATCH, LR = 30, 64, 3e-3
VALID_FRACTION = 0.1


def quantize_digits(images: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """Grey values 0..16, (N, 8, 8) any dtype -> (N, 1, 8, 8) int64 levels round(v * (levels - 1) / 16)."""
    if levels < 2:
        raise ValueError(f"quantize_digits: levels must be >= 2, got {levels}")
    x = torch.as_tensor(images, dtype=torch.float64)
    return torch.round(x.clamp(0, 16) * ((levels - 1) / 16.0)).to(torch.int64).reshape(-1, 1, *x.shape[-2:])


def load_dataset(levels: int = LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits, quantised: (images (1797, 1, 8, 8) int64 in [0, levels), labels (1797,) int64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits data comes from scikit-learn: pip install 'arkern[train]' "
                          "(or scikit-learn)") from None
    digits = load_digits()
    return quantize_digits(torch.from_numpy(digits.images), levels), torch.from_numpy(digits.target).to(torch.int64)


def split(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed (train, valid) index split of the recipe."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_valid = round(n * VALID_FRACTION)
    return perm[n_valid:], perm[:n_valid]


def train(out: Path, *, epochs: int = EPOCHS, seed: int = 0, log: Callable[[str], None] = print
          ) -> tuple[Path, Path]:
    """Train the digits GatedPixelCNN and write ``out/digits.json`` + ``out/digits.safetensors``."""
    torch.manual_seed(seed)
    images, labels = load_dataset()
    train_idx, valid_idx = split(len(images), seed)
    model = GatedPixelCNN(**MODEL_KWARGS)
    steps = len(train_idx) // BATCH
    g = torch.Generator().manual_seed(seed)

    def batches(epoch: int) -> Iterator[torch.Tensor]:
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        for b in range(steps):
            yield order[b * BATCH:(b + 1) * BATCH]

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images[idx], labels[idx]), images[idx])

    def evaluate() -> dict[str, float]:
        return {"valid_bits": float(loss_fn(valid_idx)) / math.log(2.0)}

    log(f"digits: GatedPixelCNN {MODEL_KWARGS}, {sum(p.numel() for p in model.parameters())} parameters; "
        f"{len(train_idx)} training images ({len(valid_idx)} held out), {epochs} epochs of {steps} steps "
        f"(batch {BATCH}), {torch.get_num_threads()} threads")
    figures = fit(model, loss_fn, batches, epochs=epochs, steps_per_epoch=steps, lr=LR, log=log, evaluate=evaluate)
    meta = {
        "kind": "image", "shape": list(SHAPE), "levels": LEVELS, "labels": [str(d) for d in range(10)],
        "description": "class-conditional GatedPixelCNN on scikit-learn's load_digits, 8x8, 4 grey levels",
        "data": {"source": "sklearn.datasets.load_digits", "preprocessing": "level = round(v * 3 / 16)",
                 "train_images": len(train_idx), "valid_images": len(valid_idx), "seed": seed},
        "training": {"recipe": "arkern train digits", "epochs": epochs, "batch": BATCH, "lr": LR,
                     "threads": torch.get_num_threads(), "torch": torch.__version__,
                     **{k: round(v, 4) for k, v in figures.items()}},
    }
    json_path, weights_path = save(model, out / "digits", kwargs=MODEL_KWARGS, meta=meta)
    log(f"wrote {json_path} and {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB)")
    return json_path, weights_path
