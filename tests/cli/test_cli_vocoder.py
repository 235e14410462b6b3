"""`arkern convert` + `arkern sample DIR --condition mel.npy`: a wavenet_vocoder checkpoint converted on the
command line and sampled to a 16-bit WAV at the rate stored in its JSON; bad conditioning and speakers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from arkern.audio import read_wav
from arkern.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
upstream = pytest.importorskip("wavenet_vocoder")

CONFIG = dict(out_channels=6, layers=2, stacks=1, residual_channels=4, gate_channels=6, skip_out_channels=5,
              kernel_size=3, cin_channels=3, upsample_conditional_features=True, upsample_scales=[2, 2],
              freq_axis_kernel_size=3, scalar_input=True)


@pytest.fixture(scope="module")
def vocoder_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vocoder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        up = upstream.WaveNet(**CONFIG)
    torch.save({"state_dict": up.state_dict(), "global_step": 1}, tmp / "ckpt.pth")
    pairs = [f"{k}={v}" for k, v in CONFIG.items()] + ["log_scale_min=-7.0", "num_classes=65536",
                                                        "sample_rate=8000"]
    config = [arg for pair in pairs for arg in ("--config", pair)]
    assert main(["convert", "--source", "wavenet_vocoder", str(tmp / "ckpt.pth"), "--out", str(tmp / "model"),
                 *config]) == 0
    np.save(tmp / "mel.npy", np.random.default_rng(0).random((3, 10)).astype(np.float32))
    return tmp


def test_sample_with_condition(vocoder_dir, capsys):
    out = vocoder_dir / "x.wav"
    assert main(["sample", str(vocoder_dir / "model"), "--condition", str(vocoder_dir / "mel.npy"), "--out",
                 str(out), "--seed", "1", "--no-progress"]) == 0
    audio, rate = read_wav(str(out))
    assert rate == 8000 and audio.shape == (1, 40)  # 10 frames x hop 4
    assert audio.abs().max() <= 1 and len(torch.unique(audio)) > 5
    assert "method=fused" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--seconds", "0.01"], "10 frames, which condition 40 samples at hop 4, fewer than the 80 samples requested"),
    (["--speaker", "0"], "--speaker: the model has no speaker embedding"),
])
def test_bad_condition(vocoder_dir, extra, message, capsys):
    with pytest.raises(SystemExit):
        main(["sample", str(vocoder_dir / "model"), "--condition", str(vocoder_dir / "mel.npy"), "--out",
              str(vocoder_dir / "y.wav"), "--no-progress", *extra])
    assert message in capsys.readouterr().err


def test_missing_condition(vocoder_dir, capsys):
    with pytest.raises(SystemExit):
        main(["sample", str(vocoder_dir / "model"), "--out", str(vocoder_dir / "z.wav")])
    assert "--condition FEATURES.npy is needed" in capsys.readouterr().err
