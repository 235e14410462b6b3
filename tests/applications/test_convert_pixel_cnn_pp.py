"""arkern.convert source "pixel-cnn-pp" (pclucas14/pixel-cnn-pp) against an upstream-layout model written here
from the published architecture: upstream's key names, shapes and math (old-style weight norm everywhere,
shifted convs, cropped deconvs, nin = Linear over channels, its output layout and loss), random weights with
perturbed weight_g, checkpoints saved as upstream saves them (torch.save(model.state_dict()), also from
DataParallel). log p must match upstream's loss; naive, cached and fused samples must be identical."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import arkern
from arkern.cli import main
from arkern.convert.pixel_cnn_pp import checkpoint_config
from arkern.sampling import available_methods

pytestmark = [pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated"), pytest.mark.usefixtures("one_thread")]


# ----------------------------------------------------------------- the upstream layout (written from the paper
# and upstream's published module structure; only the key names and the math have to agree)
def _wn(layer: nn.Module) -> nn.Module:
    return nn.utils.weight_norm(layer)  # old-style weight_g / weight_v, dim=0 (as upstream)


class _Shifted(nn.Module):
    """down_shifted_conv2d (pad left/right (kW-1)/2, top kH-1) or down_right_shifted_conv2d (left kW-1)."""

    def __init__(self, cin: int, cout: int, k: tuple[int, int], right: bool, stride: int = 1) -> None:
        super().__init__()
        self.conv = _wn(nn.Conv2d(cin, cout, k, stride))
        self.pad = (k[1] - 1, 0, k[0] - 1, 0) if right else ((k[1] - 1) // 2, (k[1] - 1) // 2, k[0] - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class _Deconv(nn.Module):
    """down(_right)_shifted_deconv2d: ConvTranspose2d(stride 2, output_padding 1), then cropped."""

    def __init__(self, f: int, k: tuple[int, int], right: bool) -> None:
        super().__init__()
        self.deconv = _wn(nn.ConvTranspose2d(f, f, k, 2, output_padding=1))
        self.k, self.right = k, right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.deconv(x)
        h, w = y.shape[-2:]
        kh, kw = self.k
        if self.right:
            return y[:, :, : h - kh + 1, : w - kw + 1]
        return y[:, :, : h - kh + 1, (kw - 1) // 2: w - (kw - 1) // 2]


class _Nin(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.lin_a = _wn(nn.Linear(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin_a(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _concat_elu(x: torch.Tensor) -> torch.Tensor:
    return F.elu(torch.cat([x, -x], 1))


def _down_shift(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x[:, :, :-1], (0, 0, 1, 0))


def _right_shift(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x[:, :, :, :-1], (1, 0))


class _GatedResnet(nn.Module):
    def __init__(self, f: int, right: bool, skip: int) -> None:
        super().__init__()
        k = (2, 2) if right else (2, 3)
        self.conv_input = _Shifted(2 * f, f, k, right)
        if skip:
            self.nin_skip = _Nin(2 * skip * f, f)
        self.dropout = nn.Dropout2d(0.5)
        self.conv_out = _Shifted(2 * f, 2 * f, k, right)

    def forward(self, x: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_input(_concat_elu(x))
        if a is not None:
            h = h + self.nin_skip(_concat_elu(a))
        h = self.conv_out(self.dropout(_concat_elu(h)))
        gate_a, gate_b = h.chunk(2, 1)
        return x + gate_a * torch.sigmoid(gate_b)


class _Stage(nn.Module):
    def __init__(self, n: int, f: int, up: bool) -> None:
        super().__init__()
        self.u_stream = nn.ModuleList([_GatedResnet(f, False, 0 if up else 1) for _ in range(n)])
        self.ul_stream = nn.ModuleList([_GatedResnet(f, True, 1 if up else 2) for _ in range(n)])


class UpstreamPixelCNN(nn.Module):
    """pixel-cnn-pp's PixelCNN: same attribute names, shapes and forward."""

    def __init__(self, nr_resnet: int, nr_filters: int, nr_logistic_mix: int, input_channels: int) -> None:
        super().__init__()
        f, c = nr_filters, input_channels
        self.up_layers = nn.ModuleList([_Stage(nr_resnet, f, True) for _ in range(3)])
        self.down_layers = nn.ModuleList([_Stage(n, f, False) for n in (nr_resnet, nr_resnet + 1, nr_resnet + 1)])
        self.downsize_u_stream = nn.ModuleList([_Shifted(f, f, (2, 3), False, 2) for _ in range(2)])
        self.downsize_ul_stream = nn.ModuleList([_Shifted(f, f, (2, 2), True, 2) for _ in range(2)])
        self.upsize_u_stream = nn.ModuleList([_Deconv(f, (2, 3), False) for _ in range(2)])
        self.upsize_ul_stream = nn.ModuleList([_Deconv(f, (2, 2), True) for _ in range(2)])
        self.u_init = _Shifted(c + 1, f, (2, 3), False)
        self.ul_init = nn.ModuleList([_Shifted(c + 1, f, (1, 3), False), _Shifted(c + 1, f, (2, 1), True)])
        self.nin_out = _Nin(f, (3 if c == 1 else 10) * nr_logistic_mix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        us = [_down_shift(self.u_init(x))]
        uls = [_down_shift(self.ul_init[0](x)) + _right_shift(self.ul_init[1](x))]
        for i in range(3):
            for u_block, ul_block in zip(self.up_layers[i].u_stream, self.up_layers[i].ul_stream):
                us.append(u_block(us[-1]))
                uls.append(ul_block(uls[-1], us[-1]))
            if i < 2:
                us.append(self.downsize_u_stream[i](us[-1]))
                uls.append(self.downsize_ul_stream[i](uls[-1]))
        u, ul = us.pop(), uls.pop()
        for i in range(3):
            for u_block, ul_block in zip(self.down_layers[i].u_stream, self.down_layers[i].ul_stream):
                u = u_block(u, us.pop())
                ul = ul_block(ul, torch.cat([u, uls.pop()], 1))
            if i < 2:
                u, ul = self.upsize_u_stream[i](u), self.upsize_ul_stream[i](ul)
        assert not us and not uls
        return self.nin_out(F.elu(ul))


def upstream_log_prob(x: torch.Tensor, out: torch.Tensor, nr_mix: int) -> torch.Tensor:
    """discretized_mix_logistic_loss(_1d), negated, per image. x (N, C, H, W) in [-1, 1], out (N, P, H, W) in
    upstream's layout [logits | per colour: means, log-scales(, coeffs)] -> (N,)."""
    n, c, h, w = x.shape
    per = 3 if c == 3 else 2
    logits = out[:, :nr_mix]
    params = out[:, nr_mix:].reshape(n, c, per, nr_mix, h, w)
    means, log_s = params[:, :, 0], params[:, :, 1].clamp(min=-7.0)
    xs = x.unsqueeze(2)  # (N, C, 1, H, W)
    if c == 3:
        coef = torch.tanh(params[:, :, 2])  # coef[:, 0]: G on R, coef[:, 1]: B on R, coef[:, 2]: B on G
        means = torch.stack([means[:, 0], means[:, 1] + coef[:, 0] * xs[:, 0],
                             means[:, 2] + coef[:, 1] * xs[:, 0] + coef[:, 2] * xs[:, 1]], 1)
    inv_s = torch.exp(-log_s)
    plus, minus = inv_s * (xs - means + 1 / 255), inv_s * (xs - means - 1 / 255)
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_s * (xs - means)
    inner = torch.where(delta > 1e-5, torch.log(delta.clamp(min=1e-12)),
                        mid - log_s - 2 * F.softplus(mid) - math.log(127.5))
    lp = torch.where(xs < -0.999, plus - F.softplus(plus), torch.where(xs > 0.999, -F.softplus(minus), inner))
    per_mix = lp.sum(1) + torch.log_softmax(logits, 1)  # (N, M, H, W)
    return torch.logsumexp(per_mix, 1).sum((1, 2))


def upstream_model(nr_resnet: int, nr_filters: int, nr_logistic_mix: int, input_channels: int,
                   seed: int = 0) -> UpstreamPixelCNN:
    """Random weights that matter: weight_g moved off ||weight_v||, biases non-zero."""
    torch.manual_seed(seed)
    model = UpstreamPixelCNN(nr_resnet, nr_filters, nr_logistic_mix, input_channels)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(torch.empty_like(p).uniform_(0.6, 1.8))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
    return model.eval()


def scale_levels(levels: torch.Tensor) -> torch.Tensor:
    """upstream main.py: ToTensor (level / 255 in float32), then (x - .5) * 2."""
    return (levels.to(torch.uint8).float().div(255) - 0.5) * 2


def _images(c: int, h: int, w: int, n: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 256, (n, c, h, w), generator=g)
    levels[0, :, :2] = 0  # both edge bins
    levels[-1, :, -2:] = 255
    return levels


CONFIGS = {  # name: (nr_resnet, nr_filters, nr_logistic_mix, input_channels, (H, W))
    "rgb": (1, 16, 3, 3, (8, 8)),
    "rgb-deep": (2, 8, 5, 3, (12, 12)),
    "grey": (1, 8, 4, 1, (12, 8)),
}


def _kwargs(name: str) -> dict:
    r, f, m, c, _ = CONFIGS[name]
    return {"nr_resnet": r, "nr_filters": f, "nr_logistic_mix": m, "input_channels": c}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_log_prob_matches_upstream(name, tmp_path):
    kwargs = _kwargs(name)
    h, w = CONFIGS[name][4]
    up = upstream_model(**kwargs)
    levels = _images(kwargs["input_channels"], h, w)
    with torch.no_grad():
        expected = upstream_log_prob(scale_levels(levels), up(scale_levels(levels)), kwargs["nr_logistic_mix"])
    plain, parallel = tmp_path / "plain.pth", tmp_path / "parallel.pth"
    torch.save(up.state_dict(), plain)
    torch.save(nn.DataParallel(up).state_dict(), parallel)  # keys "module.u_init.conv.weight_g", ...
    assert next(iter(torch.load(parallel, weights_only=True))).startswith("module.")
    for path in (plain, parallel):
        model = arkern.convert.load(path, "pixel-cnn-pp", **kwargs)
        assert not model.training and model.meta["source"] == "pixel-cnn-pp" and model.meta["config"] == kwargs
        with torch.no_grad():
            got = model.log_prob(levels)
        torch.testing.assert_close(got, expected, rtol=2e-5, atol=1e-3)
        assert torch.all(got < -levels[0].numel())  # not a degenerate likelihood: < 1 nat per sub-pixel gone


def test_checkpoint_from_before_upstreams_weight_norm_fix():
    # until April 2019 upstream's shifted convs were not weight-normed (plain conv.weight); deconvs and nin were
    up = upstream_model(**_kwargs("rgb"), seed=2)
    for module in up.modules():
        if isinstance(module, _Shifted):
            nn.utils.remove_weight_norm(module.conv)
    state = up.state_dict()
    assert "u_init.conv.weight" in state and "upsize_u_stream.0.deconv.weight_g" in state
    levels = _images(3, 8, 8)
    model = arkern.convert.load(state, "pixel-cnn-pp", **_kwargs("rgb"))
    with torch.no_grad():
        expected = upstream_log_prob(scale_levels(levels), up(scale_levels(levels)), 3)
        torch.testing.assert_close(model.log_prob(levels), expected, rtol=2e-5, atol=1e-3)


@pytest.mark.parametrize("name", ["rgb", "grey"])
def test_naive_cached_fused_identical(name):
    model = arkern.convert.load(upstream_model(**_kwargs(name), seed=3).state_dict(), "pixel-cnn-pp",
                                **_kwargs(name))
    methods = available_methods(model)
    assert methods[0] == "fused", methods
    runs = {m: arkern.generate(model, 2, shape=(8, 8), method=m, seed=7, progress=False)
            for m in ("naive", "cached", "fused")}
    assert torch.equal(runs["naive"], runs["cached"])
    assert torch.equal(runs["cached"], runs["fused"])
    assert runs["fused"].shape == (2, CONFIGS[name][3], 8, 8)
    assert len(torch.unique(runs["fused"])) > 5


def test_bad_checkpoints_name_the_key_and_both_shapes():
    kwargs = _kwargs("rgb")
    state = upstream_model(**kwargs).state_dict()
    missing = {k: v for k, v in state.items() if k != "down_layers.1.ul_stream.1.nin_skip.lin_a.weight_v"}
    with pytest.raises(ValueError, match=r"missing key 'down_layers.1.ul_stream.1.nin_skip.lin_a.weight_v' "
                                         r"\(expected shape \(16, 64\)\)"):
        arkern.convert.load(missing, "pixel-cnn-pp", **kwargs)
    extra = {**state, "up_layers.0.u_stream.1.conv_out.conv.bias": torch.zeros(32)}
    with pytest.raises(ValueError, match=r"unexpected keys for the given config: "
                                         r"up_layers.0.u_stream.1.conv_out.conv.bias \(32,\)"):
        arkern.convert.load(extra, "pixel-cnn-pp", **kwargs)
    with pytest.raises(ValueError, match=r"'u_init.conv.weight_v' has shape \(16, 4, 2, 3\), expected "
                                         r"\(32, 4, 2, 3\).*point to nr_filters=16, input_channels=3, "
                                         r"nr_resnet=1, nr_logistic_mix=3"):
        arkern.convert.load(state, "pixel-cnn-pp", **{**kwargs, "nr_filters": 32})
    with pytest.raises(ValueError, match=r"unexpected keys.*layers.0.u_stream.1.*point to .*nr_resnet=2"):
        arkern.convert.load(upstream_model(2, 16, 3, 3).state_dict(), "pixel-cnn-pp", **kwargs)
    with pytest.raises(ValueError, match=r"'nin_out.lin_a.weight_v' has shape \(30, 16\), expected \(50, 16\)"):
        arkern.convert.load(state, "pixel-cnn-pp", **{**kwargs, "nr_logistic_mix": 5})
    assert checkpoint_config(state) == {"nr_filters": 16, "input_channels": 3, "nr_resnet": 1, "nr_logistic_mix": 3}


def test_bad_config():
    state = upstream_model(**_kwargs("rgb")).state_dict()
    with pytest.raises(TypeError, match=r"unknown config key\(s\) \['nr_filter'\].*nr_filters"):
        arkern.convert.load(state, "pixel-cnn-pp", nr_filter=16)
    for key, value in (("nr_resnet", -1), ("nr_filters", 0), ("nr_filters", "16"), ("nr_logistic_mix", True),
                       ("input_channels", 2), ("resnet_nonlinearity", "relu"), ("shape", [6, 8]), ("shape", 8)):
        with pytest.raises(ValueError, match=key):
            arkern.convert.load(state, "pixel-cnn-pp", **{**_kwargs("rgb"), key: value})


def test_cli_convert_sample_eval(tmp_path, capsys):
    kwargs = _kwargs("rgb")
    up = upstream_model(**kwargs, seed=4)
    ckpt = tmp_path / "pcnn_lr.0.00040_nr-resnet1_nr-filters16_9.pth"
    torch.save(nn.DataParallel(up).state_dict(), ckpt)
    out = tmp_path / "converted"
    config = [a for k, v in kwargs.items() for a in ("--config", f"{k}={v}")]
    assert main(["convert", "--source", "pixel-cnn-pp", str(ckpt), *config, "--out", str(out)]) == 0
    assert "PixelCNNpp" in capsys.readouterr().out
    model = arkern.load(out)
    assert model.meta["source"] == "pixel-cnn-pp" and model.meta["shape"] == [32, 32]  # upstream's CIFAR size
    assert arkern.convert.load(ckpt, "pixel-cnn-pp", **kwargs, shape=[8, 12]).meta["shape"] == [8, 12]
    grid = tmp_path / "grid.png"
    assert main(["sample", str(out), "--n", "4", "--out", str(grid), "--seed", "1", "--no-progress"]) == 0
    assert grid.stat().st_size > 0
    levels = _images(3, 32, 32, n=2)
    data = tmp_path / "x.npy"
    np.save(data, levels.numpy())
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(data), "--no-progress"]) == 0
    with torch.no_grad():
        nll = -upstream_log_prob(scale_levels(levels), up(scale_levels(levels)), 3).mean().item()
    printed = re.search(r"NLL ([0-9.]+) nats per item", capsys.readouterr().out)
    assert printed and float(printed.group(1)) == pytest.approx(nll, rel=1e-5)
    # a config that does not match: exit 1 with the key's name; an unknown key: a usage error (exit 2)
    assert main(["convert", "--source", "pixel-cnn-pp", str(ckpt), *config, "--config", "nr_filters=8",
                 "--out", str(tmp_path / "bad")]) == 1
    assert "'u_init.conv.weight_v' has shape (16, 4, 2, 3), expected (8, 4, 2, 3)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["convert", "--source", "pixel-cnn-pp", str(ckpt), "--config", "filters=8", "--out", str(out)])
    assert e.value.code == 2 and "unknown config key(s) ['filters']" in capsys.readouterr().err
