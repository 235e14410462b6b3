"""Sources "nv-wavenet" and "pytorch-wavenet": upstream-layout modules written here from the published
architectures (their key names, shapes and math), converted and compared on teacher-forced outputs; the
converted nv-wavenet model samples fused == cached."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arkern import convert
from arkern.distributions import draw_uniforms
from arkern.sampling import generate, method_reasons
from arkern.testing import assert_close


class _Conv(nn.Module):
    """nv-wavenet's Conv wrapper: the parameters live under ``.conv``."""

    def __init__(self, cin: int, cout: int, k: int = 1, dilation: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.dilation, self.k = dilation, k
        self.conv = nn.Conv1d(cin, cout, k, dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, ((self.k - 1) * self.dilation, 0)))  # causal


class NvWaveNetLayout(nn.Module):
    def __init__(self, n_in, n_layers, max_dilation, R, S, A, C, window, stride) -> None:
        super().__init__()
        self.L, self.R = n_layers, R
        self.upsample = nn.ConvTranspose1d(C, C, window, stride)
        self.cond_layers = _Conv(C, 2 * R * n_layers)
        self.embed = nn.Embedding(n_in, R)
        self.conv_out = _Conv(S, A, bias=False)
        self.conv_end = _Conv(A, A, bias=False)
        cycle = max_dilation.bit_length()
        self.dilate_layers = nn.ModuleList(_Conv(R, 2 * R, 2, 2 ** (i % cycle)) for i in range(n_layers))
        self.res_layers = nn.ModuleList(_Conv(R, R) for _ in range(n_layers - 1))
        self.skip_layers = nn.ModuleList(_Conv(R, S) for _ in range(n_layers))

    def body(self, y_in: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The network at inference alignment: position t from y_in[t] and conditioning sample t."""
        B, T = y_in.shape
        cond = self.cond_layers(self.upsample(features)[:, :, :T]).view(B, self.L, 2 * self.R, T)
        x = self.embed(y_in).transpose(1, 2)
        out = 0
        for i in range(self.L):
            act = self.dilate_layers[i](x) + cond[:, i]
            acts = torch.tanh(act[:, :self.R]) * torch.sigmoid(act[:, self.R:])
            if i < self.L - 1:
                x = self.res_layers[i](acts) + x
            out = out + self.skip_layers[i](acts)
        return self.conv_end(F.relu(self.conv_out(F.relu(out))))


NV = dict(n_in_channels=24, n_layers=5, max_dilation=4, n_residual_channels=8, n_skip_channels=12,
          n_out_channels=24, n_cond_channels=3, upsamp_window=10, upsamp_stride=4)


def test_nv_wavenet():
    torch.manual_seed(0)
    up = NvWaveNetLayout(24, 5, 4, 8, 12, 24, 3, 10, 4).eval()
    model = convert.load({"model": up.state_dict()}, "nv-wavenet", **NV, sample_rate=16000)
    B, frames = 2, 6
    T = 5 * 4 + 3  # 6 frames reach (6 - 1) * 4 + 10 = 30 samples; ask for fewer
    feats = torch.randn(B, 3, frames)
    y = torch.randint(0, 24, (B, T))
    with torch.no_grad():
        expected = up.body(torch.cat([torch.full((B, 1), 12), y[:, :-1]], 1), feats)
        assert_close(model(y, feats), expected, name="nv-wavenet logits", dtype=torch.float32, scale=4)
    assert "fused" not in method_reasons(model)
    noise = draw_uniforms((B, 30), seed=1)
    kw = dict(length=30, noise=noise, condition=feats, progress=False)
    fused = generate(model, B, method="fused", **kw)
    assert torch.equal(fused, generate(model, B, method="cached", **kw))
    with pytest.raises(ValueError, match="6 frames, which condition 30 samples .* the 31 samples"):
        generate(model, B, method="fused", length=31, condition=feats, progress=False)


class PytorchWaveNetLayout(nn.Module):
    def __init__(self, layers, blocks, D, R, S, E, A, K, bias) -> None:
        super().__init__()
        self.K = K
        self.dilations = [2 ** i for _ in range(blocks) for i in range(layers)]
        n = len(self.dilations)
        self.start_conv = nn.Conv1d(1, R, 1, bias=bias)
        self.filter_convs = nn.ModuleList(nn.Conv1d(R, D, K, bias=bias) for _ in range(n))
        self.gate_convs = nn.ModuleList(nn.Conv1d(R, D, K, bias=bias) for _ in range(n))
        self.residual_convs = nn.ModuleList(nn.Conv1d(D, R, 1, bias=bias) for _ in range(n))
        self.skip_convs = nn.ModuleList(nn.Conv1d(D, S, 1, bias=bias) for _ in range(n))
        self.end_conv_1 = nn.Conv1d(S, E, 1)
        self.end_conv_2 = nn.Conv1d(E, A, 1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.start_conv(x)
        skip = 0
        for i, d in enumerate(self.dilations):
            xp = F.pad(x, ((self.K - 1) * d, 0))
            f = self.filter_convs[i]
            g = self.gate_convs[i]
            z = torch.tanh(F.conv1d(xp, f.weight, f.bias, dilation=d)) * \
                torch.sigmoid(F.conv1d(xp, g.weight, g.bias, dilation=d))
            skip = skip + self.skip_convs[i](z)
            x = self.residual_convs[i](z) + x
        return self.end_conv_2(F.relu(self.end_conv_1(F.relu(skip))))


@pytest.mark.parametrize("bias", [False, True])
def test_pytorch_wavenet(bias):
    cfg = dict(layers=3, blocks=2, dilation_channels=6, residual_channels=5, skip_channels=7, end_channels=9,
               classes=16, kernel_size=2, bias=bias, output_length=4)
    torch.manual_seed(1)
    up = PytorchWaveNetLayout(3, 2, 6, 5, 7, 9, 16, 2, bias).eval()
    model = convert.load(up.state_dict(), "pytorch-wavenet", **cfg)
    B, T = 2, 25
    y = torch.randint(0, 16, (B, T))
    prev = torch.cat([torch.full((B, 1), 8), y[:, :-1]], 1)
    with torch.no_grad():
        expected = up.body((prev.float() / 16 * 2 - 1).unsqueeze(1))
        assert_close(model(y), expected, name="pytorch-wavenet logits", dtype=torch.float32, scale=4)
    state = dict(up.state_dict())
    state["gate_convs.4.weight"] = torch.zeros(6, 5, 3)
    with pytest.raises(ValueError, match=r"'gate_convs.4.weight' has shape \(6, 5, 3\), expected \(6, 5, 2\)"):
        convert.load(state, "pytorch-wavenet", **cfg)
