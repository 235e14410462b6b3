"""The `arkern` command end to end: `sample` to PNG and WAV (decoded back with Pillow and `wave`),
reproducible with --seed, the same images from every method, bad arguments -> exit code 2 and a message."""

from __future__ import annotations

import os
import subprocess
import sys
import wave

import numpy as np
import pytest
import torch
from PIL import Image

import arkern
from arkern.cli import main, save_image_grid

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _arkern(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "arkern", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def _wav(path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as f:
        assert f.getnchannels() == 1 and f.getsampwidth() == 2
        return np.frombuffer(f.readframes(f.getnframes()), dtype="<i2"), f.getframerate()


def test_sample_digits_png_reproducible(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "sub" / "b.png"
    for out in (a, b):
        run = _arkern("sample", "digits", "--n", "12", "--label", "3", "--seed", "5", "--out", str(out),
                      "--no-progress", "--threads", "1")
        assert run.returncode == 0, run.stderr
        assert "images/s" in run.stdout and "samples/s" in run.stdout and f"wrote {out}" in run.stdout
    pixels = _png(a)
    # 12 images in a 4 x 3 grid of 8x8 images at 8 px per pixel, 1-pixel borders
    assert pixels.shape == (3 * 9 * 8 + 8, 4 * 9 * 8 + 8)
    assert set(np.unique(pixels)) <= {0, 85, 170, 255, 48}  # the 4 grey levels and the border
    assert np.array_equal(pixels, _png(b))


def test_sample_tones_wav_reproducible(tmp_path):
    paths = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for out in paths:
        run = _arkern("sample", "tones", "--seconds", "0.25", "--seed", "2", "--out", str(out), "--no-progress")
        assert run.returncode == 0, run.stderr
        assert "samples/s" in run.stdout and "real time" in run.stdout
    audio, rate = _wav(paths[0])
    assert rate == 8000 and audio.shape == (2000,) and np.abs(audio).max() > 1000  # not silence
    assert np.array_equal(audio, _wav(paths[1])[0])


def test_bad_arguments_exit_2_in_a_subprocess(tmp_path):
    run = _arkern("sample", "digits", "--n", "0", "--out", str(tmp_path / "x.png"))
    assert run.returncode == 2 and "--n must be >= 1" in run.stderr and "usage: arkern sample" in run.stderr
    run = _arkern("sample", "nosuchmodel")
    assert run.returncode == 2 and "no model 'nosuchmodel'" in run.stderr


def test_every_method_draws_the_same_images(tmp_path, capsys):
    outs = []
    for method in ("naive", "cached", None):
        out = tmp_path / f"{method}.png"
        args = ["sample", "digits", "--n", "2", "--seed", "9", "--out", str(out), "--no-progress"]
        assert main(args + (["--method", method] if method else [])) == 0
        outs.append(_png(out))
    assert "method=" in capsys.readouterr().out
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_sample_audio_clips_and_in_process_wav(tmp_path):
    out = tmp_path / "two.wav"
    assert main(["sample", "tones", "--n", "2", "--seconds", "0.05", "--seed", "1", "--method", "cached",
                 "--out", str(out), "--no-progress"]) == 0
    audio, rate = _wav(out)
    assert audio.shape == (400 + 2000 + 400,)  # two clips a quarter second apart
    assert np.all(audio[400:2400] == 0)


@pytest.mark.parametrize("args,message", [
    (["sample", "digits", "--label", "10"], "--label must be in [0, 10)"),
    (["sample", "digits", "--temperature", "0"], "--temperature must be a finite number"),
    (["sample", "digits", "--top-k", "0"], "--top-k must be >= 1"),
    (["sample", "digits", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["sample", "digits", "--threads", "0"], "--threads must be >= 1"),
    (["sample", "digits", "--seconds", "2"], "--seconds applies to audio models"),
    (["sample", "digits", "--out", "digits.wav"], "must end in .png"),
    (["sample", "digits", "--shape", "0", "8"], "--shape must be two ints >= 1"),
    (["sample", "tones", "--label", "3"], "--label applies to image models"),
    (["sample", "tones", "--seconds", "-1"], "--seconds must be > 0"),
    (["sample", "tones", "--out", "tones.png"], "must end in .wav"),
    (["sample", "digits", "--method", "fast"], "invalid choice: 'fast'"),
    (["sample", "digits", "--n", "two"], "invalid int value"),
    (["train", "cats"], "invalid choice: 'cats'"),
    (["train", "digits", "--epochs", "0"], "--epochs must be >= 1"),
    (["frobnicate"], "invalid choice"),
    (["sample", "digits", "--distributed"], "--distributed: start the command with torchrun"),
])
def test_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_checkpoint_is_a_usage_error(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(broken)])
    assert exc.value.code == 2 and "not an arkern checkpoint config" in capsys.readouterr().err


def test_train_digits_one_epoch(tmp_path, capsys):
    """The recipe end to end (the bundled weights are the same command with the default 30 epochs)."""
    assert main(["train", "digits", "--out", str(tmp_path), "--epochs", "1", "--threads", "1"]) == 0
    log = capsys.readouterr().out
    assert "epoch 1/1" in log and "valid_bits" in log and "wrote" in log
    assert main(["sample", str(tmp_path / "digits.json"), "--n", "3", "--label", "7", "--seed", "0",
                 "--out", str(tmp_path / "d.png"), "--no-progress"]) == 0
    assert _png(tmp_path / "d.png").shape == (2 * 9 * 8 + 8, 2 * 9 * 8 + 8)  # 3 images: a 2 x 2 grid


def test_distributed_sample_under_torchrun_matches_one_process(tmp_path):
    """`--distributed` under torchrun (2 processes on gloo): rank 0 writes the same PNG as one process."""
    pytest.importorskip("arkern.distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["sample", "digits", "--num-samples", "6", "--seed", "3", "--no-progress"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "arkern", *args, "--distributed", "--out", str(tmp_path / "two.png")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "x 2 processes" in run.stdout
    assert main([*args, "--out", str(tmp_path / "one.png")]) == 0
    assert np.array_equal(_png(tmp_path / "two.png"), _png(tmp_path / "one.png"))


def test_sample_bf16_is_the_fused_bfloat16_precision(tmp_path, capsys):
    """--bf16 draws what generate(..., method="fused", weight_dtype=torch.bfloat16) draws; other methods refuse it."""
    out, expected = tmp_path / "bf16.png", tmp_path / "expected.png"
    assert main(["sample", "digits", "--n", "4", "--label", "3", "--seed", "5", "--bf16", "--out", str(out),
                 "--no-progress"]) == 0
    model = arkern.load("digits")
    images = arkern.generate(model, 4, shape=(8, 8), condition=3, seed=5, method="fused",
                             weight_dtype=torch.bfloat16)
    save_image_grid(str(expected), images, model.num_classes, cols=None, scale=8)
    assert np.array_equal(_png(out), _png(expected))
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "digits", "--n", "2", "--bf16", "--method", "cached", "--out", str(out), "--no-progress"])
    assert exit_info.value.code == 2
    assert "--bf16 is an option of the fused sampler; --method is 'cached'" in capsys.readouterr().err
