"""Source "pixelcnn-pytorch" (jzbontar/pixelcnn-pytorch): log_prob equals upstream's summed cross-entropy,
naive == cached == fused samples, clear errors on bad checkpoints, the CLI round trip.

``upstream_net`` is written here from the published architecture (its key names, shapes and math): an
nn.Sequential of masked convs with ``mask`` buffers, BatchNorm2d and ReLU, then a 1x1 conv to the logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import arkern
from arkern import convert
from arkern.cli import main
from arkern.families import draw_noise
from arkern.sampling import sample_image

FM, LAYERS, K, LEVELS = 8, 3, 5, 256


class UpstreamMaskedConv2d(nn.Conv2d):
    """A conv whose weight is multiplied by a mask buffer: A hides the centre pixel, B shows it."""

    def __init__(self, mask_type: str, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones_like(self.weight))
        _, _, kh, kw = self.weight.shape
        self.mask[:, :, kh // 2, kw // 2 + (mask_type == "B"):] = 0
        self.mask[:, :, kh // 2 + 1:] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def upstream_net(fm: int = FM, layers: int = LAYERS, k: int = K, levels: int = LEVELS, seed: int = 0) -> nn.Sequential:
    """The upstream network with random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for n in range(layers):
        mods += [UpstreamMaskedConv2d("A" if n == 0 else "B", 1 if n == 0 else fm, fm, k, 1, k // 2, bias=False),
                 nn.BatchNorm2d(fm), nn.ReLU(True)]
    net = nn.Sequential(*mods, nn.Conv2d(fm, levels, 1))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return net.eval()


def upstream_nll(net: nn.Sequential, x: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """Upstream's loss per image: cross-entropy of net(level / 255) against the levels, summed (nats)."""
    with torch.no_grad():
        logits = net(x.float() / (levels - 1))
    return F.cross_entropy(logits, x[:, 0], reduction="none").flatten(1).sum(1)


def config(**extra: object) -> dict:
    return {"fm": FM, "num_layers": LAYERS, "kernel_size": K, "num_classes": LEVELS, **extra}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_log_prob_equals_upstream_loss(tmp_path, prefix):
    net = upstream_net()
    path = tmp_path / "pixelcnn.pth"
    torch.save({f"{prefix}{k}": v for k, v in net.state_dict().items()}, path)
    model = convert.load(path, "pixelcnn-pytorch", **config(shape=(7, 6)))
    x = torch.randint(0, LEVELS, (3, 1, 7, 6))
    x[0, 0, 0] = 0  # borders: zero padding around an input in [0, 1], not a foldable bias
    nll = upstream_nll(net, x)
    torch.testing.assert_close(-model.log_prob(x), nll, rtol=2e-5, atol=1e-3)
    assert model.meta["source"] == "pixelcnn-pytorch" and model.meta["shape"] == [7, 6] and not model.training


def test_naive_cached_fused_identical():
    model = convert.load(upstream_net(k=3).state_dict(), "pixelcnn-pytorch", **config(kernel_size=3))
    noise = draw_noise(model, 2, (5, 6), seed=3)
    images = {m: sample_image(model, 2, shape=(5, 6), method=m, noise=noise) for m in ("naive", "cached", "fused")}
    assert torch.equal(images["naive"], images["cached"]) and torch.equal(images["naive"], images["fused"])
    assert images["naive"].shape == (2, 1, 5, 6) and len(images["naive"].unique()) > 1


def test_bad_checkpoints_name_key_and_shapes():
    state = upstream_net().state_dict()
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(8, 1, 5, 5\), expected \(16, 1, 5, 5\)"):
        convert.load(state, "pixelcnn-pytorch", **config(fm=16))
    with pytest.raises(ValueError, match=r"'9.weight' has shape \(256, 8, 1, 1\), expected \(8, 8, 5, 5\)"):
        convert.load(state, "pixelcnn-pytorch", **config(num_layers=4))
    with pytest.raises(ValueError, match=r"unexpected keys for the given config: 12.weight \(4, 4\)"):
        convert.load(dict(state, **{"12.weight": torch.zeros(4, 4)}), "pixelcnn-pytorch", **config())
    missing = {k: v for k, v in state.items() if k != "4.running_var"}
    with pytest.raises(ValueError, match=r"missing key '4.running_var' \(expected shape \(8,\)\)"):
        convert.load(missing, "pixelcnn-pytorch", **config())
    bad = dict(state, **{"3.mask": torch.ones_like(state["3.mask"])})
    with pytest.raises(ValueError, match=r"'3.mask' is not the mask B"):
        convert.load(bad, "pixelcnn-pytorch", **config())
    with pytest.raises(ValueError, match="input_channels must be 1"):
        convert.load(state, "pixelcnn-pytorch", **config(input_channels=3))
    with pytest.raises(TypeError, match="nr_resnet"):
        convert.load(state, "pixelcnn-pytorch", nr_resnet=5)


def test_cli_convert_sample_and_load(tmp_path, capsys):
    path = tmp_path / "ckpt.pth"
    torch.save(upstream_net(k=3).state_dict(), path)
    out = tmp_path / "converted"
    args = ["convert", str(path), "--source", "pixelcnn-pytorch", "--out", str(out), "--config", f"fm={FM}",
            "--config", f"num_layers={LAYERS}", "--config", "kernel_size=3", "--config", "shape=[4, 5]"]
    assert main(args) == 0
    grid = tmp_path / "grid.png"
    assert main(["sample", str(out), "--n", "4", "--out", str(grid), "--seed", "0", "--no-progress"]) == 0
    assert grid.stat().st_size > 0 and "4 images 4x5" in capsys.readouterr().out
    model = arkern.load(out)
    x = torch.randint(0, LEVELS, (2, 1, 4, 5))
    torch.testing.assert_close(-model.log_prob(x), upstream_nll(upstream_net(k=3), x), rtol=2e-5, atol=1e-3)
