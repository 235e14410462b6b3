"""Source "wavenet_vocoder": conversions checked against the real upstream module (wavenet-vocoder 0.1.1, a
test dependency) with random weights — teacher-forced outputs and likelihood — and master's layout
(upsample_net.*, unbiased conditioning, √(1/layers) skips) against its published forward written here."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arkern import convert
from arkern.testing import assert_close

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    upstream = pytest.importorskip("wavenet_vocoder")
    from wavenet_vocoder.mixture import discretized_mix_logistic_loss

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")  # upstream's old weight norm


def _randomize(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.3 if name.endswith("bias") else 1.0
            p.copy_(p + scale * torch.randn(p.shape, generator=g, dtype=p.dtype) * p.abs().mean().clamp(min=0.1))


MOL = dict(out_channels=30, layers=4, stacks=2, residual_channels=6, gate_channels=10, skip_out_channels=7,
           kernel_size=3, cin_channels=3, upsample_conditional_features=True, upsample_scales=[2, 3],
           freq_axis_kernel_size=3, scalar_input=True, legacy=True)


def test_mol_local_conditioning_matches_upstream(tmp_path):
    torch.manual_seed(0)
    up = upstream.WaveNet(**MOL).eval()
    _randomize(up, 1)
    path = tmp_path / "checkpoint_step000010000_ema.pth"
    torch.save({"state_dict": up.state_dict(), "global_step": 10000}, path)
    model = convert.load(path, "wavenet_vocoder", **MOL, log_scale_min=-9.0, num_classes=65536, sample_rate=22050)
    assert model.meta["sample_rate"] == 22050 and model.meta["source"] == "wavenet_vocoder"
    B, frames = 2, 4
    T = frames * 6
    c = torch.rand(B, 3, frames)
    y = torch.rand(B, T) * 1.8 - 0.9
    x_in = torch.cat([torch.zeros(B, 1), y[:, :-1]], 1).unsqueeze(1)  # upstream's synthesis start: 0.0
    with torch.no_grad():
        expected = up(x_in, c=c)
        got = model(y, c)
        assert_close(got, expected, name="teacher-forced mixture parameters", dtype=torch.float32, scale=4)
        nll = discretized_mix_logistic_loss(expected, y.unsqueeze(-1), num_classes=65536, log_scale_min=-9.0,
                                            reduce=False)
        assert_close(model.log_prob(y, c), -nll.squeeze(-1).sum(1), name="log_prob", dtype=torch.float32, scale=4)


def test_softmax_speaker_embedding_matches_upstream():
    cfg = dict(out_channels=16, layers=3, stacks=1, residual_channels=5, gate_channels=8, skip_out_channels=6,
               kernel_size=2, gin_channels=4, n_speakers=3, use_speaker_embedding=True, legacy=False,
               weight_normalization=False)
    torch.manual_seed(2)
    up = upstream.WaveNet(**cfg).eval()
    _randomize(up, 3)
    model = convert.load(up.state_dict(), "wavenet_vocoder", **cfg)
    B, T = 3, 20
    y = torch.randint(0, 16, (B, T))
    spk = torch.tensor([2, 0, 1])
    x_in = F.one_hot(torch.cat([torch.full((B, 1), 7), y[:, :-1]], 1), 16).transpose(1, 2).float()  # 127 of 256
    with torch.no_grad():
        expected = up(x_in, g=spk.view(B, 1))
        cond = {"global": spk}
        assert_close(model(y, None, spk), expected, name="teacher-forced logits", dtype=torch.float32, scale=4)
        ce = F.cross_entropy(expected, y, reduction="none").sum(1)
        assert_close(model.log_prob(y, cond), -ce, name="log_prob", dtype=torch.float32, scale=4)
    assert model.start_value == 7


class _MasterUpsample(nn.Module):
    """master's ConvInUpsampleNetwork, from its published architecture (stretch + Conv2d per scale)."""

    def __init__(self, scales: list[int], cin: int, cin_pad: int) -> None:
        super().__init__()
        self.scales = scales
        self.conv_in = nn.Conv1d(cin, cin, 2 * cin_pad + 1, bias=False)
        layers = []
        for s in scales:
            layers += [nn.Identity(), nn.utils.weight_norm(nn.Conv2d(1, 1, (1, 2 * s + 1), padding=(0, s),
                                                                     bias=False))]
        self.up_layers = nn.ModuleList(layers)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(c).unsqueeze(1)
        for i, s in enumerate(self.scales):
            x = self.up_layers[2 * i + 1](F.interpolate(x, scale_factor=(1, s), mode="nearest"))
        return x.squeeze(1)


def test_master_layout():
    # master = 0.1.1's layers without conditioning biases, a stretch/Conv2d upsampler, skips x sqrt(1/L)
    base = dict(out_channels=3, layers=4, stacks=2, residual_channels=6, gate_channels=8, skip_out_channels=5,
                kernel_size=3, cin_channels=2, scalar_input=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(4)
        up = upstream.WaveNet(**base).eval()
        _randomize(up, 5)
        ups = _MasterUpsample([2, 2], 2, cin_pad=1)
        _randomize(ups, 6)
    for layer in up.conv_layers:
        layer.conv1x1c.bias.data.zero_()
    state = {k: v for k, v in up.state_dict().items() if not k.endswith("conv1x1c.bias")}
    state.update({f"upsample_net.upsample.{k}" if k.startswith("up_layers") else f"upsample_net.{k}": v
                  for k, v in ups.state_dict().items()})
    cfg = dict(base, upsample_conditional_features=True,
               upsample_params={"upsample_scales": [2, 2], "cin_pad": 1, "cin_channels": 2},
               output_distribution="Normal", cin_pad=1)
    cfg["out_channels"] = 2
    with pytest.raises(ValueError, match=r"key 'last_conv_layers.3.weight_v' has shape \(3, 5, 1\), expected "
                                         r"\(2, 5, 1\)"):
        convert.load(state, "wavenet_vocoder", **cfg, log_scale_min=-7.0)
    cfg["out_channels"], cfg["output_distribution"] = 3, "Logistic"
    model = convert.load(state, "wavenet_vocoder", **cfg, log_scale_min=-7.0, num_classes=256)
    B, frames = 2, 7
    c = torch.rand(B, 2, frames)  # 7 frames with cin_pad 1 condition 5 x 4 = 20 samples
    T = 20
    y = torch.rand(B, T) * 2 - 1
    x = torch.cat([torch.zeros(B, 1), y[:, :-1]], 1).unsqueeze(1)
    with torch.no_grad():
        c_up = ups(c)
        h = up.first_conv(x)
        skips = 0
        for f in up.conv_layers:
            h, s = f(h, c_up, None)
            skips = skips + s
        h = skips * math.sqrt(1.0 / len(up.conv_layers))
        for f in up.last_conv_layers:
            h = f(h)
        assert_close(model(y, c), h, name="master-layout outputs", dtype=torch.float32, scale=4)


def test_missing_config_and_keys():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        up = upstream.WaveNet(**MOL).eval()
    with pytest.raises(ValueError, match=r"need \['log_scale_min', 'num_classes'\]"):
        convert.load(up.state_dict(), "wavenet_vocoder", **MOL)
    state = dict(up.state_dict())
    del state["conv_layers.2.conv1x1_skip.bias"]
    with pytest.raises(ValueError, match=r"missing key 'conv_layers.2.conv1x1_skip.bias' \(expected shape \(7,\)\)"):
        convert.load(state, "wavenet_vocoder", **MOL, log_scale_min=-7.0, num_classes=256)
    with pytest.raises(ValueError, match=r"unexpected keys.*conv_layers.2.conv.bias \(10,\)"):
        convert.load(up.state_dict(), "wavenet_vocoder", **{**MOL, "layers": 2, "stacks": 1}, log_scale_min=-7.0,
                     num_classes=256)
    with pytest.raises(ValueError, match="unknown config keys.*'hop_size'"):
        convert.load(up.state_dict(), "wavenet_vocoder", **MOL, hop_size=256)
