"""The generalised WaveNet family: kernel K, gate/skip/end channels, scalings, the three inputs, the three
heads, the four upsamplers and speaker embeddings. Cached decoding against the teacher-forced forward,
naive == cached == fused samples under one seed (softmax: identical classes; continuous heads: the same
component choices, values equal up to the arithmetic's rounding), the likelihood, the chunked conditioning,
and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from arkern import wavenet_heads as heads
from arkern.decode import wavenet as dw
from arkern.distributions import draw_uniforms
from arkern.families import family_of
from arkern.models import WaveNet
from arkern.sampling import generate
from arkern.testing import assert_close
from tests.conftest import wavenet

A = math.sqrt(0.5)
CONFIGS = {
    # name: (config, batch, local frames per test length 24 or None, global kind)
    "mol_convt2d": (dict(num_layers=4, stacks=2, kernel_size=3, residual_channels=6, gate_channels=10,
                         skip_channels=7, input="scalar", head="logistic_mixture", num_mixtures=3,
                         num_classes=65536, residual_scale=A, skip_scale="legacy", cond_channels=3,
                         upsample="convt2d", upsample_scales=(2, 3), freq_axis_kernel_size=3,
                         log_scale_min=-9.0), 2, 4, None),
    "gauss_stretch": (dict(num_layers=3, stacks=1, kernel_size=2, residual_channels=5, gate_channels=8,
                           skip_channels=6, input="scalar", head="gaussian", residual_scale=A,
                           skip_scale="sqrt_layers", cond_channels=2, upsample="stretch_conv2d",
                           upsample_scales=(2, 2), freq_axis_kernel_size=1, cin_pad=1, cond_bias=False,
                           upsample_activation="relu", global_channels=3, speakers=4), 1, 8, "speaker"),
    "softmax_k3_convt1d": (dict(num_layers=5, max_dilation=4, kernel_size=3, residual_channels=8,
                                skip_channels=9, end_channels=11, num_classes=20, input="embedding",
                                start_class=9, cond_channels=2, cond_hop=5, upsample="convt1d",
                                upsample_window=12, global_channels=2, global_bias=True), 2, 5, "vector"),
    "softmax_fused_scaled": (dict(num_layers=4, max_dilation=4, residual_channels=8, skip_channels=10,
                                  num_classes=24, input="embedding", residual_scale=A, skip_scale="legacy",
                                  bias=False, head_bias=False, cond_channels=2, cond_hop=3, upsample="convt1d",
                                  upsample_window=7, speakers=3, global_channels=2), 2, 8, "speaker"),
}


def _model(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> WaveNet:
    model = wavenet(CONFIGS[name][0], dtype, seed=seed)
    with torch.no_grad():  # sharper outputs: samples depend on the past and the mixtures are not flat
        for p in model.parameters():
            p.mul_(1.5)
    return model


def _condition(model: WaveNet, name: str, batch: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    _, _, frames, kind = CONFIGS[name]
    local = torch.rand(batch, model.config.cond_channels, frames, generator=g, dtype=torch.float64)
    glob = None
    if kind == "speaker":
        glob = torch.randint(0, model.config.speakers, (batch,), generator=g)
    elif kind == "vector":
        glob = torch.randn(batch, model.config.global_channels, generator=g, dtype=torch.float64)
    return {"local": local, "global": glob} if glob is not None else local


def _data(model: WaveNet, batch: int, T: int) -> torch.Tensor:
    if model.config.head == "softmax":
        return torch.randint(0, model.config.num_classes, (batch, T))
    return torch.rand(batch, T, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("ops", ["arkern", "eager"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_outputs_match_forward(name, ops, monkeypatch):
    monkeypatch.setattr(dw, "COND_WINDOW_FLOATS", 1)  # windows of 8 samples: several per run
    model, batch = _model(name), CONFIGS[name][1]
    T = 24 if name != "gauss_stretch" else 20
    cond = _condition(model, name, batch)
    local, glob = (cond["local"], cond["global"]) if isinstance(cond, dict) else (cond, None)
    y = _data(model, batch, T)
    expected = model(y, local, glob).transpose(1, 2)
    noise = draw_uniforms(family_of(model).noise_shape(model, batch, T), seed=0)
    _, out = dw.sample(model, noise, method="cached", ops=ops, forced=y, return_logits=True, cond=local, gcond=glob)
    assert_close(out, expected, name=f"cached outputs ({ops})", dtype=torch.float64, scale=10)
    # the likelihood: the sum of the per-step head log-likelihoods
    cfg = model.config
    per_step = heads.log_prob(cfg.head, out.transpose(1, 2), y, num_classes=cfg.num_classes,
                              log_scale_min=cfg.log_scale_min)
    assert_close(model.log_prob(y, cond), per_step.sum(1), name="log_prob", dtype=torch.float64, scale=10)
    assert model.log_prob(y, cond).shape == (batch,)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_naive_cached_fused_identical(name, monkeypatch):
    monkeypatch.setattr(dw, "COND_WINDOW_FLOATS", 1)
    model, batch = _model(name, seed=2), CONFIGS[name][1]
    T = 20 if name != "gauss_stretch" else 16
    cond = _condition(model, name, batch, seed=3)
    if isinstance(cond, dict):
        cond["local"] = torch.rand(batch, model.config.cond_channels, CONFIGS[name][2] * 2, dtype=torch.float64)
    else:
        cond = torch.rand(batch, model.config.cond_channels, CONFIGS[name][2] * 2, dtype=torch.float64)
    noise = draw_uniforms(family_of(model).noise_shape(model, batch, T), seed=4)
    kw = dict(length=T, noise=noise, condition=cond, progress=False)
    naive = generate(model, batch, method="naive", **kw)
    cached = generate(model, batch, method="cached", **kw)
    model32 = model.float()
    cached32 = generate(model32, batch, method="cached", ops="eager", **kw)
    if model.config.head == "softmax":
        assert torch.equal(naive, cached)
        assert naive.dtype == torch.int64 and torch.equal(cached, cached32)
        assert len(torch.unique(naive)) > 1
    else:
        # continuous draws: the same component choices, values equal up to the arithmetic's rounding
        assert_close(cached, naive, name="naive vs cached samples", dtype=torch.float64, scale=10)
        assert naive.dtype == torch.float64 and naive.abs().max() <= 1 and len(torch.unique(naive)) > 4
        assert_close(cached32, cached, name="float32 model samples", dtype=torch.float32, scale=100)
    assert family_of(model).method_reasons(model) == {}
    fused = generate(model32, batch, method="fused", chunk_size=7, **kw)
    if model.config.head == "softmax":
        assert torch.equal(fused, cached32)
    else:
        assert_close(fused, cached32, name="fused vs cached samples", dtype=torch.float32, scale=100)


def test_mixture_draw_uses_two_uniforms():
    # component by inverse CDF of the mixture weights, then the logistic quantile of the second uniform
    out = torch.tensor([[0.0, 10.0, 0.2, -0.4, -1.0, -2.0]])  # 2 components: logits, means, log-scales
    x = heads.sample("logistic_mixture", out, torch.tensor([[0.5, 0.5]], dtype=torch.float64), log_scale_min=-7)
    assert torch.allclose(x, torch.tensor([-0.4], dtype=torch.float64))
    x = heads.sample("logistic_mixture", out, torch.tensor([[0.5, 0.75]], dtype=torch.float64), log_scale_min=-7)
    assert torch.allclose(x, torch.tensor([-0.4 + math.exp(-2.0) * math.log(3.0)], dtype=torch.float64))
    assert heads.uniforms_per_step("logistic_mixture") == 2 and heads.uniforms_per_step("gaussian") == 1


@pytest.mark.parametrize("name", ["mol_convt2d", "gauss_stretch", "softmax_k3_convt1d"])
def test_upsampler_windows_equal_whole(name):
    model = _model(name)
    up = model.upsampler
    frames = 9
    c = torch.rand(2, model.config.cond_channels, frames, dtype=torch.float64)
    T = up.samples_available(frames)
    whole = up(c, T)
    assert whole.shape == (2, model.config.cond_channels, T)
    for size in (3, 17):
        parts = torch.cat([up.window(c, a, min(T, a + size)) for a in range(0, T, size)], 2)
        assert_close(parts, whole, name=f"windows of {size}", dtype=torch.float64)


def test_bad_input():
    model = _model("gauss_stretch", torch.float32)
    local = torch.rand(1, 2, 8)  # (8 - 2 cin_pad) frames x hop 4 = 24 samples
    with pytest.raises(ValueError, match="speaker id out of range"):
        generate(model, 1, length=8, condition={"local": local, "global": torch.tensor([4])}, progress=False)
    with pytest.raises(ValueError, match="8 frames, which condition 24 samples .* the 30 samples"):
        generate(model, 1, length=30, condition={"local": local, "global": torch.tensor([0])}, progress=False)
    with pytest.raises(ValueError, match="temperature must be 1"):
        generate(model, 1, length=8, condition={"local": local, "global": torch.tensor([0])}, temperature=0.5,
                 progress=False)
    with pytest.raises(ValueError, match="scalar input goes with the continuous heads"):
        WaveNet(num_layers=2, input="scalar")
    with pytest.raises(ValueError, match="head must be one of"):
        WaveNet(num_layers=2, head="laplace")
