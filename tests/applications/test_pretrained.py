"""The bundled models (arkern.load("digits"), arkern.load("tones"); mnist: tests/test_mnist.py), the checkpoint
format and its errors.

Quality checks on the bundled weights (no time is asserted):
- digits: a logistic-regression classifier trained here on the same data and preprocessing (scikit-learn's
  load_digits, 8x8, quantised to 4 levels) labels the model's class-conditional samples. Chance is 10%;
  with the shipped weights, 100 samples (10 per class, seed 0, temperature 1) are labelled with their
  requested class about 90% of the time (measured 0.92 for seed 0, 0.87-0.93 over seeds 0-5). The test
  requires >= 60%: well above chance, with room for a different torch build's rounding to change draws.
- tones: the dominant frequency of each loud 64 ms window of a sampled second lies within 3% of a note of
  the training scale. Measured for the shipped weights: 0.87-1.0 of the windows (8 clips, seeds 0-3); the
  training melody itself: 0.98; an untrained WaveNet of the same size: 0.0. Required: >= 0.6 for both clips.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import arkern
from arkern.audio import mulaw_decode
from arkern.models import GatedPixelCNN, WaveNet
from arkern.pretrained import HERE, bundled, load_config, save
from arkern.sampling import available_methods

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_bundled_models_are_installed_and_small():
    assert bundled() == ["mnist", "digits", "tones"]
    for name in ("digits", "tones"):
        weights = HERE / f"{name}.safetensors"
        assert weights.stat().st_size < 5e6
        assert load_config(name)["weights"]["file"] == weights.name


def test_load_bundled_digits():
    model = arkern.load("digits")
    assert isinstance(model, GatedPixelCNN) and not model.training
    assert model.num_labels == 10 and model.num_classes == 4
    assert model.meta["kind"] == "image" and tuple(model.meta["shape"]) == (8, 8) and model.meta["name"] == "digits"


def test_load_bundled_tones():
    model = arkern.load("tones")
    assert isinstance(model, WaveNet) and not model.training
    assert model.meta["kind"] == "audio" and model.meta["sample_rate"] == 8000


def test_digits_samples_are_recognised_as_the_requested_digit():
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from arkern.training.digits import load_dataset

    def features(x: torch.Tensor):
        return (x.flatten(1).to(torch.float64) / 3.0).numpy()

    images, labels = load_dataset()
    with threadpool_limits(1):  # BLAS threads on a busy 2-core machine make this fit 100x slower
        classifier = LogisticRegression(max_iter=3000).fit(features(images), labels.numpy())
        assert classifier.score(features(images), labels.numpy()) > 0.95  # the classifier itself works
        model = arkern.load("digits")
        wanted = torch.arange(10).repeat_interleave(10)
        samples = arkern.generate(model, 100, shape=(8, 8), condition=wanted, seed=0, progress=False)
        assert samples.shape == (100, 1, 8, 8) and int(samples.min()) >= 0 and int(samples.max()) < 4
        predicted = torch.from_numpy(classifier.predict(features(samples)))
    accuracy = float((predicted == wanted).double().mean())
    print(f"classifier accuracy on the model's samples: {accuracy:.2f}")
    assert accuracy >= 0.6, f"only {accuracy:.2f} of the samples look like the requested digit"


def _scale_pitch_fraction(audio: torch.Tensor, scale_hz: list[float], rate: int, win: int = 512) -> float:
    """Fraction of the loud windows of `audio` (T,) whose spectral peak is within 3% of a scale note."""
    n = len(audio) // win
    frames = audio[: n * win].to(torch.float64).reshape(n, win) * torch.hann_window(win, dtype=torch.float64)
    peak = torch.fft.rfftfreq(8192, 1.0 / rate)[torch.fft.rfft(frames, n=8192).abs().argmax(1)]
    loud = frames.pow(2).mean(1).sqrt() > 0.05
    near = torch.stack([(peak / f - 1).abs() < 0.03 for f in scale_hz]).any(0)
    return float((near & loud).sum()) / max(1, int(loud.sum()))


def test_tones_samples_play_notes_of_the_training_scale():
    from arkern.training.tones import SCALE_HZ, melody

    model = arkern.load("tones")
    rate = model.meta["sample_rate"]
    assert _scale_pitch_fraction(melody(2.0, seed=3), list(SCALE_HZ), rate) > 0.9  # the measure works
    samples = arkern.generate(model, 2, length=rate, seed=0, progress=False)
    audio = mulaw_decode(samples, model.config.num_classes, torch.float64)
    fractions = [_scale_pitch_fraction(a, list(SCALE_HZ), rate) for a in audio]
    assert min(fractions) >= 0.6, f"pitch on the scale in {fractions} of the windows"


def test_bundled_digits_methods_agree():
    model = arkern.load("digits")
    methods = available_methods(model)
    assert "cached" in methods and "naive" in methods
    outs = [arkern.generate(model, 3, shape=(8, 8), condition=[1, 5, 7], seed=4, method=m, progress=False)
            for m in methods]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


def test_loading_never_unpickles(monkeypatch):
    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_pickle)
    arkern.load("digits")
    arkern.load("tones")


# ---------------------------------------------------------------- the format and its errors

def _copy(tmp_path, name: str = "digits"):
    for suffix in (".json", ".safetensors"):
        shutil.copy(HERE / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    return tmp_path / f"{name}.json", tmp_path / f"{name}.safetensors"


def _edit_config(json_path, **changes):
    config = json.loads(json_path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    json_path.write_text(json.dumps(config))
    return config


def test_load_by_any_path(tmp_path):
    json_path, weights_path = _copy(tmp_path)
    reference = arkern.load("digits").state_dict()
    for path in (json_path, weights_path, str(tmp_path / "digits")):
        state = arkern.load(path).state_dict()
        assert all(torch.equal(state[k], reference[k]) for k in reference)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model 'nosuchmodel'.*digits, tones"):
        arkern.load("nosuchmodel")
    with pytest.raises(FileNotFoundError, match="x.json: checkpoint config not found"):
        arkern.load(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        arkern.load(tmp_path)
    json_path, weights_path = _copy(tmp_path)
    weights_path.unlink()
    with pytest.raises(FileNotFoundError, match="digits.safetensors: weights file not found"):
        arkern.load(json_path)


def test_truncated_and_corrupted_weights(tmp_path):
    json_path, weights_path = _copy(tmp_path)
    data = weights_path.read_bytes()
    weights_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="digits.safetensors: checksum mismatch"):
        arkern.load(json_path)
    config = _edit_config(json_path)
    del config["weights"]["sha256"]  # without the checksum, the safetensors reader itself must refuse
    json_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="digits.safetensors: not a valid safetensors file"):
        arkern.load(json_path)
    weights_path.write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        arkern.load(json_path)
    weights_path.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")  # header length beyond the file
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        arkern.load(json_path)


def test_config_that_does_not_match_the_weights(tmp_path):
    json_path, _ = _copy(tmp_path)
    kwargs = load_config(json_path)["kwargs"]
    _edit_config(json_path, kwargs={**kwargs, "hidden_channels": 16})
    with pytest.raises(ValueError, match="digits.safetensors does not match the config .*digits.json.*shape"):
        arkern.load(json_path)
    _edit_config(json_path, kwargs={**kwargs, "num_layers": 3})
    with pytest.raises(ValueError, match="unexpected tensors"):
        arkern.load(json_path)
    _edit_config(json_path, kwargs={**kwargs, "no_such_argument": 1})
    with pytest.raises(ValueError, match="digits.json: cannot build GatedPixelCNN"):
        arkern.load(json_path)
    _edit_config(json_path, kwargs=kwargs, model="Transformer")
    with pytest.raises(ValueError, match="digits.json: unknown model type 'Transformer'"):
        arkern.load(json_path)
    _edit_config(json_path, model="GatedPixelCNN", version=99)
    with pytest.raises(ValueError, match="unsupported checkpoint version 99"):
        arkern.load(json_path)
    json_path.write_text("{ not json")
    with pytest.raises(ValueError, match="digits.json: not a valid JSON config"):
        arkern.load(json_path)


def test_config_naming_other_weights(tmp_path):
    json_path, _ = _copy(tmp_path, "digits")
    _copy(tmp_path, "tones")
    config = _edit_config(json_path)
    config["weights"] = {"file": "tones.safetensors"}
    json_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="tones.safetensors does not match the config .*digits.json"):
        arkern.load(json_path)


def test_save_load_roundtrip_and_non_finite(tmp_path):
    torch.manual_seed(0)
    kwargs = {"image_channels": 1, "num_classes": 3, "hidden_channels": 4, "num_layers": 2, "num_labels": 2}
    model = GatedPixelCNN(**kwargs)
    json_path, weights_path = save(model, tmp_path / "tiny", kwargs=kwargs, meta={"shape": [4, 4]})
    loaded = arkern.load(weights_path)
    assert loaded.meta["shape"] == [4, 4]
    a = arkern.generate(model, 2, shape=(4, 4), condition=1, seed=3, progress=False)
    assert torch.equal(a, arkern.generate(loaded, 2, shape=(4, 4), condition=1, seed=3, progress=False))
    wavenet = WaveNet(num_layers=2, residual_channels=4, skip_channels=4, num_classes=8, max_dilation=2)
    save(wavenet, tmp_path / "wn")  # WaveNet: kwargs from its config
    assert arkern.load(tmp_path / "wn.json").config == wavenet.config
    json_default, _ = save(model, tmp_path / "nokwargs")  # image models: kwargs from what the constructor kept
    assert json.loads(json_default.read_text())["kwargs"] == {**model.kwargs, **kwargs}
    with pytest.raises(ValueError, match="does not match"):
        save(model, tmp_path / "wrong", kwargs={**kwargs, "num_layers": 3})
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["links.0.weight"][0, 0] = float("nan")
    save_file(state, str(weights_path))
    _edit_config(json_path, weights={"file": weights_path.name})  # no checksum: reach the value check
    with pytest.raises(ValueError, match="tiny.safetensors: non-finite values .*links.0.weight"):
        arkern.load(json_path)


def test_training_melody():
    from arkern.training.tones import AMPLITUDE, SAMPLE_RATE, melody

    x = melody(0.5, seed=1)
    assert x.shape == (SAMPLE_RATE // 2,) and x.dtype == torch.float32
    assert float(x.abs().max()) <= AMPLITUDE + 1e-6 and float(x.abs().max()) > AMPLITUDE / 2
    assert torch.equal(x, melody(0.5, seed=1)) and not torch.equal(x, melody(0.5, seed=2))
    with pytest.raises(ValueError, match="seconds > 0"):
        melody(0.0)


# ---------------------------------------------------------------- arkern.generate on the bundled image model

def test_generate_image_arguments():
    model = arkern.load("digits")
    rows = []
    out = arkern.generate(model, 2, shape=(3, 8), condition=4, seed=1, callback=lambda r, i: rows.append((i, r.shape)))
    assert out.shape == (2, 1, 3, 8) and rows == [(i, (2, 1, 1, 8)) for i in range(3)]
    noise = torch.rand(2, 1, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, arkern.generate(model, 2, shape=(3, 8), condition=[4, 4], noise=noise, progress=False))
    gen = torch.Generator().manual_seed(1)
    assert torch.equal(out, arkern.generate(model, 2, shape=(3, 8), condition=torch.tensor([4, 4]), generator=gen,
                                            progress=False))
    cases = [
        (dict(length=5), ValueError, "samples images: pass shape"),
        (dict(shape=(8,)), ValueError, "shape must be \\(height, width\\)"),
        (dict(shape=(8, 8), method="fast"), ValueError, "method must be one of"),
        (dict(shape=(8, 8), seed=1, generator=torch.Generator()), ValueError, "not both"),
        (dict(shape=(8, 8), noise=torch.rand(2, 1, 8, 7, dtype=torch.float64)), ValueError, "noise must have shape"),
        (dict(shape=(8, 8), noise=torch.rand(2, 1, 8, 8)), TypeError, "float64"),
        (dict(shape=(8, 8), condition="three"), TypeError, "condition must be"),
        (dict(shape=(8, 8), condition=[1.5, 2]), TypeError, "condition must be int class labels"),
        (dict(shape=(8, 8), condition=10), ValueError, "labels must be in \\[0, 10\\)"),
        (dict(shape=(8, 8)), ValueError, "class-conditional; pass condition"),
        (dict(shape=(8, 8), condition=1, temperature=0), ValueError, "temperature must be"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            arkern.generate(model, 2, progress=False, **kwargs)
    with pytest.raises(ValueError, match="samples sequences: pass length"):
        arkern.generate(arkern.load("tones"), 1, shape=(2, 2), progress=False)
