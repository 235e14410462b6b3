"""Benchmark cases for PixelCNN-family sampling: images/s of the naive and cached samplers, and of a
plain-PyTorch eager cached sampler (the baseline a user would write), at the same noise.

Providers: "naive" (baseline: one full forward per sub-pixel), "cached" (arkern.decode incremental
protocol), "eager" (:func:`eager_cached_sample` below, PixelCNN only: per-layer activation maps, each
new position computed with F.conv2d on the layer's input patch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import arkern.nn as ann
from arkern.bench.harness import Case
from arkern.decode.incremental import Residual, masked_conv_mask
from arkern.decode.pixelcnn import draw_noise, sample_image
from arkern.models.gated_pixelcnn import GatedPixelCNN
from arkern.models.pixelcnn import PixelCNN
from arkern.models.pixelcnnpp import PixelCNNpp


def _flatten(module: nn.Module) -> list:
    """PixelCNN.net as a flat program: ("res_begin"|"res_end", None) markers and layers."""
    out: list = []
    for m in module:
        if isinstance(m, Residual):
            out += [("res_begin", None), *_flatten(m.body), ("res_end", None)]
        else:
            out.append(("layer", m))
    return out


@torch.no_grad()
def eager_cached_sample(model: PixelCNN, noise: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch cached sampling of a :class:`PixelCNN` (what a user writes without arkern).

    Keeps every layer's input map (padded); for each new position and colour sub-step runs each conv on
    its input patch with ``F.conv2d(patch, masked_weight)`` (weights masked once up front).
    Shapes: noise (N, C, H, W) -> (N, C, H, W).
    """
    n, c, h, w = noise.shape
    k = model.num_classes
    program = _flatten(model.net)
    dtype = next(model.parameters()).dtype
    maps: dict[int, torch.Tensor] = {}
    weights: dict[int, torch.Tensor] = {}
    for idx, (kind, m) in enumerate(program):
        if kind == "layer" and isinstance(m, ann.MaskedConv2d):
            ph, pw = m.kernel_size[0] // 2, m.kernel_size[1] // 2
            maps[idx] = torch.zeros(n, m.in_channels, h + 2 * ph, w + 2 * pw, dtype=dtype)
            weights[idx] = m.weight * masked_conv_mask(m).to(m.weight.dtype)  # masked once, like a user would
    image = torch.zeros(n, c, h, w, dtype=torch.int64)
    xf = model.prepare(image)
    for i in range(h):
        for j in range(w):
            for g in range(c):
                x = xf[:, :, i, j]
                stack = []
                for idx, (kind, m) in enumerate(program):
                    if kind == "res_begin":
                        stack.append(x)
                    elif kind == "res_end":
                        x = stack.pop() + x
                    elif isinstance(m, ann.MaskedConv2d):
                        kh, kw = m.kernel_size
                        buf = maps[idx]
                        buf[:, :, i + kh // 2, j + kw // 2] = x
                        x = F.conv2d(buf[:, :, i:i + kh, j:j + kw], weights[idx], m.bias)[:, :, 0, 0]
                    else:
                        x = m(x)
                logits = x.reshape(n, c, k)[:, g]
                probs = torch.softmax(logits.double(), -1)
                cdf = torch.cumsum(probs, -1)
                v = torch.searchsorted(cdf, (noise[:, g, i, j] * cdf[:, -1])[:, None], right=True)
                v = v.clamp(max=k - 1)[:, 0]
                image[:, g, i, j] = v
                xf[:, g, i, j] = model.prepare(v)
            idx0 = next(iter(maps))
            maps[idx0][:, :, i + program[idx0][1].kernel_size[0] // 2,
                       j + program[idx0][1].kernel_size[1] // 2] = xf[:, :, i, j]
    return image


def _sampling_case(name: str, make_model, batch: int, size: int, providers: tuple[str, ...]) -> Case:
    def setup():
        torch.manual_seed(0)
        model = make_model().eval()
        noise = draw_noise(model, batch, (size, size), seed=0)
        fns = {
            "naive": lambda: sample_image(model, batch, shape=(size, size), method="naive", noise=noise),
            "cached": lambda: sample_image(model, batch, shape=(size, size), method="cached", noise=noise),
            "eager": lambda: eager_cached_sample(model, noise),
        }
        return {p: fns[p] for p in providers}
    baseline = "naive" if "naive" in providers else providers[0]
    return Case("pixelcnn", f"{name} N={batch} {size}x{size} fp32", setup, baseline=baseline, items=batch,
                params={"dtype": "float32", "batch": batch, "size": size})


def pixelcnn_c64() -> PixelCNN:
    """The benchmark PixelCNN: grey, K=256, C=64, 3 residual blocks (1 + 6 + 2 = 9 masked convs)."""
    return PixelCNN(image_channels=1, num_classes=256, hidden_channels=64, num_blocks=3)


def gated_c32() -> GatedPixelCNN:
    """A small Gated PixelCNN: grey, K=256, h=32, 5 gated layers."""
    return GatedPixelCNN(image_channels=1, num_classes=256, hidden_channels=32, num_layers=5)


def pixelcnnpp_small() -> PixelCNNpp:
    """A small PixelCNN++: RGB, 32 filters, 1 resnet per scale (2 in the down pass), 5 mixtures."""
    return PixelCNNpp(image_channels=3, filters=32, num_resnets=1, num_mixtures=5)


def cases(quick: bool = False) -> list[Case]:
    """Standard configurations; naive is left out where one call would take minutes."""
    out = [_sampling_case("PixelCNN C=64 L=9", pixelcnn_c64, 1, 16, ("naive", "cached", "eager"))]
    if quick:
        return out
    out += [
        _sampling_case("PixelCNN C=64 L=9", pixelcnn_c64, 16, 16, ("naive", "cached", "eager")),
        _sampling_case("PixelCNN C=64 L=9", pixelcnn_c64, 1, 28, ("naive", "cached", "eager")),
        _sampling_case("PixelCNN C=64 L=9", pixelcnn_c64, 16, 28, ("naive", "cached", "eager")),
        _sampling_case("GatedPixelCNN h=32 L=5", gated_c32, 1, 16, ("naive", "cached")),
        _sampling_case("GatedPixelCNN h=32 L=5", gated_c32, 16, 16, ("naive", "cached")),
        _sampling_case("PixelCNNpp RGB f=32 R=1 M=5", pixelcnnpp_small, 1, 16, ("naive", "cached")),
        _sampling_case("PixelCNNpp RGB f=32 R=1 M=5", pixelcnnpp_small, 16, 16, ("naive", "cached")),
    ]
    return out
