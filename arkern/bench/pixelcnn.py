"""Benchmark cases for PixelCNN-family sampling: images/s of the fused C++ sampler against the cached
(arkern incremental protocol), plain-PyTorch eager cached and naive samplers, at the same noise.

Providers:
- "fused" / "fused-bf16": ``sample_image(method="fused")`` with float32 / bfloat16 packed weights;
- "cached": ``sample_image(method="cached")``;
- "eager": the cached sampler a user would write in plain PyTorch (:func:`eager_cached_sample` for
  PixelCNN, :func:`eager_cached_sample_gated` for GatedPixelCNN): per-layer padded activation maps, each
  new position computed with ``F.conv2d`` on the layer's input patch;
- "naive": one full forward per sub-pixel (the reference), only where a whole image takes about a second;
- "reference": where naive runs, the fused op's readable reference backend on the same packed weights
  (``arkern.reference.pixelcnn_decode`` / ``pixelcnnpp_decode``).

Every provider of a case samples the same batch of whole images, so items/s is images/s. For sizes where
naive takes minutes, :func:`sampling_table` (``python -m arkern.bench.pixelcnn``) times a few naive
steps on the full-size image and extrapolates (its cost per step does not depend on the position).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tbench
from torch import nn

import arkern.nn as ann
from arkern.backends import cpu_isas, last_cpu_isa, set_cpu_isa
from arkern.bench.harness import Case, machine_info
from arkern.families import draw_noise, family_of
from arkern.models.gated_pixelcnn import GatedPixelCNN
from arkern.models.pixelcnn import PixelCNN
from arkern.models.pixelcnnpp import PixelCNNpp
from arkern.models.pixelcnnpp_packing import pack_pixelcnnpp
from arkern.nn import Residual, masked_conv_mask
from arkern.sampling import sample_image


def _flatten(module: nn.Module) -> list:
    """PixelCNN.net as a flat program: ("res_begin"|"res_end", None) markers and layers."""
    out: list = []
    for m in module:
        if isinstance(m, Residual):
            out += [("res_begin", None), *_flatten(m.body), ("res_end", None)]
        else:
            out.append(("layer", m))
    return out


def _draw(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw as a user would write it: (N, K) logits, (N,) uniforms -> (N,) classes."""
    cdf = torch.cumsum(torch.softmax(logits.double(), -1), -1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=logits.shape[1] - 1)[:, 0]


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
                v = _draw(x.reshape(n, c, k)[:, g], noise[:, g, i, j])
                image[:, g, i, j] = v
                xf[:, g, i, j] = model.prepare(v)
            idx0 = next(iter(maps))
            maps[idx0][:, :, i + program[idx0][1].kernel_size[0] // 2,
                       j + program[idx0][1].kernel_size[1] // 2] = xf[:, :, i, j]
    return image


@torch.no_grad()
def eager_cached_sample_gated(model: GatedPixelCNN, noise: torch.Tensor,
                              condition: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch cached sampling of a :class:`GatedPixelCNN` (what a user writes without arkern).

    The vertical stack runs once per row with ``F.conv2d`` on the padded rows above; the horizontal stack
    and the head run per pixel and colour sub-step with ``F.conv2d`` on each layer's (1, k) input patch.
    Shapes: noise (N, C, H, W), condition (N,) labels or None -> (N, C, H, W).
    """
    n, c, h, w = noise.shape
    k, hid, depth = model.num_classes, model.hidden_channels, model.num_layers
    dtype = next(model.parameters()).dtype
    vkh, vkw = model.v_convs[0].kernel_size
    hkw = model.h_convs[0].kernel_size[1]
    masked = lambda m: m.weight * masked_conv_mask(m).to(dtype)
    hw, ow = [masked(m) for m in model.h_convs], [masked(m) for m in model.h_outs]
    head = [model.head[1], model.head[3]]
    head_w = [masked(m) for m in head]
    cond = model.layer_bias(condition)
    cins = [c] + [hid] * (depth - 1)
    vmaps = [torch.zeros(n, ci, h + vkh - 1, w + vkw - 1, dtype=dtype) for ci in cins]
    hmaps = [torch.zeros(n, ci, 1, w + hkw - 1, dtype=dtype) for ci in cins]
    image = torch.zeros(n, c, h, w, dtype=torch.int64)
    xf = model.prepare(image)
    conv = lambda x, weight, bias: F.conv2d(x, weight, bias)[:, :, 0, 0]
    for i in range(h):
        links = []
        for layer in range(depth):
            if i == 0:
                links.append(model.links[layer].bias[None, :, None].expand(n, -1, w))
                continue
            v_pre = F.conv2d(vmaps[layer][:, :, i - 1:i - 1 + vkh], model.v_convs[layer].weight,
                             model.v_convs[layer].bias)
            if cond[layer] is not None:
                v_pre = v_pre + cond[layer][:, :, None, None]
            links.append(model.links[layer](v_pre)[:, :, 0])
            if layer + 1 < depth:
                vmaps[layer + 1][:, :, i - 2 + vkh, vkw // 2:vkw // 2 + w] = model.v_gate(v_pre)[:, :, 0]
        for j in range(w):
            for g in range(c):
                hs = xf[:, :, i, j]
                for layer in range(depth):
                    hmaps[layer][:, :, 0, j + hkw // 2] = hs
                    pre = conv(hmaps[layer][:, :, :, j:j + hkw], hw[layer], model.h_convs[layer].bias)
                    pre = pre + links[layer][:, :, j]
                    if cond[layer] is not None:
                        pre = pre + cond[layer]
                    out = conv(model.h_gate(pre)[:, :, None, None], ow[layer], model.h_outs[layer].bias)
                    hs = out if layer == 0 else hs + out
                x = conv(torch.relu(hs)[:, :, None, None], head_w[0], head[0].bias)
                x = conv(torch.relu(x)[:, :, None, None], head_w[1], head[1].bias)
                v = _draw(x.reshape(n, c, k)[:, g], noise[:, g, i, j])
                image[:, g, i, j] = v
                xf[:, g, i, j] = model.prepare(v)
            hmaps[0][:, :, 0, j + hkw // 2] = xf[:, :, i, j]
            vmaps[0][:, :, i + vkh - 1, j + vkw // 2] = xf[:, :, i, j]
    return image


@contextlib.contextmanager
def _forced_backend(name: str):
    """Every arkern op call inside runs on backend `name` (ARKERN_BACKEND, see arkern.backends)."""
    old = os.environ.get("ARKERN_BACKEND")
    os.environ["ARKERN_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["ARKERN_BACKEND"]
        else:
            os.environ["ARKERN_BACKEND"] = old


# the plain-PyTorch eager cached sampler of a family (noise -> images); PixelCNN++ has none here
EAGER_SAMPLERS = {"pixelcnn": eager_cached_sample, "gated_pixelcnn": eager_cached_sample_gated}


def eager_sampler(model: nn.Module):
    """The plain-PyTorch eager cached sampler for `model`'s family (noise -> images), or None if there is none."""
    return EAGER_SAMPLERS.get(family_of(model).name)


def _providers(model: nn.Module, batch: int, size: int, providers: tuple[str, ...]) -> dict:
    """{provider: zero-argument sampler} for the requested providers that exist for `model` (PixelCNN++ has no
    plain-PyTorch cached sampler here)."""
    noise = draw_noise(model, batch, (size, size), seed=0)
    run = lambda method, **kw: lambda: sample_image(model, batch, shape=(size, size), method=method, noise=noise,
                                                    **kw)

    def reference():
        with _forced_backend("reference"):
            return sample_image(model, batch, shape=(size, size), method="fused", noise=noise)

    eager = eager_sampler(model)
    family = family_of(model)
    fusable = "fused" not in family.method_reasons(model)
    bf16 = torch.bfloat16 in family.fused_weight_dtypes(model)
    fns = {"naive": run("naive"), "cached": run("cached"),
           "fused": run("fused") if fusable else None,
           "fused-bf16": run("fused", weight_dtype=torch.bfloat16) if fusable and bf16 else None,
           "eager": (lambda: eager(model, noise)) if eager is not None else None,
           "reference": reference if fusable and "naive" in providers else None}
    return {p: fns[p] for p in (*providers, "reference") if fns[p] is not None}


def _sampling_case(name: str, make_model, batch: int, size: int, providers: tuple[str, ...]) -> Case:
    def setup():
        torch.manual_seed(0)
        return _providers(make_model().eval(), batch, size, providers)
    baseline = "naive" if "naive" in providers else ("eager" if "eager" in providers else providers[0])
    op = "pixelcnnpp_generate" if "PixelCNN++" in name else "pixelcnn_generate"
    return Case("pixelcnn", f"{name} N={batch} {size}x{size} fp32", setup, baseline=baseline, items=batch,
                params={"dtype": "float32", "batch": batch, "size": size, "unit": "images"},
                isa=lambda p: last_cpu_isa(op) if p.startswith("fused") else None)


def pixelcnn_c64() -> PixelCNN:
    """The benchmark PixelCNN: grey, K=256, C=64, 3 residual blocks (1 + 6 + 2 = 9 masked convs)."""
    return PixelCNN(image_channels=1, num_classes=256, hidden_channels=64, num_blocks=3)


def pixelcnn_c128() -> PixelCNN:
    """The wide benchmark PixelCNN: grey, K=256, C=128, 3 residual blocks (9 masked convs)."""
    return PixelCNN(image_channels=1, num_classes=256, hidden_channels=128, num_blocks=3)


def gated_c32() -> GatedPixelCNN:
    """A small Gated PixelCNN: grey, K=256, h=32, 5 gated layers."""
    return GatedPixelCNN(image_channels=1, num_classes=256, hidden_channels=32, num_layers=5)


def gated_c64() -> GatedPixelCNN:
    """The benchmark Gated PixelCNN: grey, K=256, h=64, 5 gated layers."""
    return GatedPixelCNN(image_channels=1, num_classes=256, hidden_channels=64, num_layers=5)


def pixelcnnpp_small() -> PixelCNNpp:
    """A small PixelCNN++: RGB, 32 filters, 1 resnet per scale (2 in the down pass), 5 mixtures."""
    return PixelCNNpp(image_channels=3, filters=32, num_resnets=1, num_mixtures=5)


MODELS = {"PixelCNN C=64 L=9": pixelcnn_c64, "PixelCNN C=128 L=9": pixelcnn_c128,
          "GatedPixelCNN h=64 L=5": gated_c64, "PixelCNN++ f=32 R=1 M=5": pixelcnnpp_small}
FAST = ("fused", "fused-bf16", "cached", "eager")


def cases(quick: bool = False) -> list[Case]:
    """Standard configurations; naive only where one whole call takes about a second."""
    if quick:
        return [_sampling_case("PixelCNN C=64 L=9", pixelcnn_c64, 1, 8, ("naive", "cached", "eager", "fused")),
                _sampling_case("GatedPixelCNN h=32 L=5", gated_c32, 4, 8, ("cached", "eager", "fused"))]
    out = [_sampling_case("PixelCNN C=64 L=9", pixelcnn_c64, 1, 16, ("naive",) + FAST),
           _sampling_case("GatedPixelCNN h=64 L=5", gated_c64, 1, 16, ("naive",) + FAST)]
    for name, make in list(MODELS.items())[:3]:
        for size in (16, 28, 32):
            for batch in (1, 16, 64):
                if (size, batch) != (16, 1) or name == "PixelCNN C=128 L=9":
                    out.append(_sampling_case(name, make, batch, size, FAST))
    out += [_sampling_case("PixelCNNpp RGB f=32 R=1 M=5", pixelcnnpp_small, 1, 16, ("naive", "cached", "fused")),
            _sampling_case("PixelCNNpp RGB f=32 R=1 M=5", pixelcnnpp_small, 16, 16, ("cached", "fused"))]
    return out


# ------------------------------------------------------------------ the same-run table, naive extrapolated


def best_seconds(fn, threads: int, min_run_time: float = 0.1) -> float:
    """Fastest per-call time among the timed blocks of `fn` (robust on a shared, noisy machine)."""
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return min(timer.blocked_autorange(min_run_time=min_run_time).times)


@torch.no_grad()
def naive_seconds(model: nn.Module, batch: int, size: int, threads: int, steps: int = 3) -> float:
    """Seconds the naive sampler needs for `batch` whole size×size images, extrapolated from `steps`
    sub-steps: each is one full forward over the image plus one draw, whatever the position."""
    xf = model.prepare(torch.zeros(batch, model.image_channels, size, size, dtype=torch.int64))
    u = torch.rand(model.noise_shape(batch, size, size)[:2], dtype=torch.float64)  # one pixel's uniforms

    def step() -> None:
        for s in range(steps):
            model.draw(model.output_map(xf)[:, :, size // 2, size // 2], u, s % model.color_steps)

    return best_seconds(step, threads) / steps * size * size * model.color_steps


def _table_row(name: str, size: int, batch: int, threads: int, sec: dict[str, float]) -> str:
    """One line of :func:`sampling_table`; "-" for providers the model does not have. The speedup over naive
    is that of the fastest sampler the model has (fused, else cached)."""
    ips = lambda p: f"{batch / sec[p]:>8.3g}" if p in sec else f"{'-':>8}"

    def ratio(a: str, b: str, width: int) -> str:
        if a not in sec or b not in sec:
            return f"{'-':>{width + 1}}"
        return f"{sec[a] / sec[b]:>{width}.{0 if a == 'naive*' else 1}f}x"

    best = "fused" if "fused" in sec else "cached"
    return (f"{name:<24} {size:>5} {batch:>3} {threads:>3} {ips('naive*')} {ips('eager')} {ips('cached')} "
            f"{ips('fused')} {ips('fused-bf16')} {ratio('naive*', best, 7)} {ratio('eager', 'fused', 6)} "
            f"{ratio('cached', 'fused', 7)}")


def sampling_table(models: dict | None = None, sizes=(16, 28, 32), batches=(1, 16, 64), threads=(1, 2),
                   rounds: int = 3, printer=print) -> list[dict]:
    """images/s of naive (extrapolated), eager, cached, fused and fused-bf16, timed in one run per row.

    Each row times every provider `rounds` times, interleaved, and keeps each provider's fastest call
    (the same rule for all, so the ratios stay fair when other processes share the machine).
    Returns one dict per (model, size, batch, threads) with seconds per provider.
    """
    models = models or MODELS
    info = machine_info()
    printer(f"machine: {info['cpu']} ({info['cores']} cores, {info['capability']}), torch {info['torch']}; "
            f"float32 models, images/s, best of {rounds} interleaved rounds; naive* extrapolated from 3 full "
            "forwards")
    head = (f"{'model':<24} {'size':>5} {'N':>3} {'thr':>3} {'naive*':>8} {'eager':>8} {'cached':>8} {'fused':>8} "
            f"{'bf16':>8} {'f/naive':>8} {'f/eager':>7} {'f/cached':>8}")
    printer(head)
    rows = []
    for name, make in models.items():
        torch.manual_seed(0)
        model = make().eval()
        for size in sizes:
            for batch in batches:
                fns = _providers(model, batch, size, FAST)
                for n in threads:
                    sec = {p: float("inf") for p in (*FAST, "naive*")}
                    for _ in range(rounds):
                        for p, fn in fns.items():
                            sec[p] = min(sec[p], best_seconds(fn, n))
                        sec["naive*"] = min(sec["naive*"], naive_seconds(model, batch, size, n))
                    sec = {p: s for p, s in sec.items() if s != float("inf")}
                    rows.append({"model": name, "size": size, "batch": batch, "threads": n, "seconds": sec})
                    printer(_table_row(name, size, batch, n, sec))
    return rows


# ------------------------------------------------------------------ PixelCNN++ at the CIFAR-10 size


def pixelcnnpp_cifar() -> PixelCNNpp:
    """The CIFAR-10 PixelCNN++ (pixel-cnn-pp's nr_resnet=5, nr_filters=160, nr_logistic_mix=10): RGB, 160
    filters, 5 gated resnets per scale in the up pass, 10 mixtures; 53.6M parameters."""
    return PixelCNNpp(image_channels=3, filters=160, num_resnets=5, num_mixtures=10)


def pixelcnnpp_cifar_small() -> PixelCNNpp:
    """The stand-in for :func:`pixelcnnpp_cifar` in the CI smoke run: RGB, 16 filters, 1 resnet, 2 mixtures."""
    return PixelCNNpp(image_channels=3, filters=16, num_resnets=1, num_mixtures=2)


@torch.no_grad()
def upstream_naive_step(model: PixelCNNpp, xf: torch.Tensor, u: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """One step of the upstream sampling loop (pclucas14/pixel-cnn-pp's main.py): a full teacher-forced forward
    of the whole network, the mixture drawn at every pixel of the output map, pixel (i, j) kept.
    Shapes: xf (N, C, H, W) values in [-1, 1], u (N·H·W, 1 + C) uniforms -> (N, C) levels at (i, j)."""
    out = model.output_map(xf)
    n, p, h, w = out.shape
    _, levels = model.draw(out.permute(0, 2, 3, 1).reshape(-1, p), u, 0)
    return levels.reshape(n, h, w, -1)[:, i, j]


def upstream_naive_seconds(model: PixelCNNpp, batch: int, size: int, forwards: int = 2) -> float:
    """Seconds the upstream-style naive loop needs for `batch` whole size×size images: the fastest of `forwards`
    timed steps (:func:`upstream_naive_step`, the same work at every pixel) times size·size steps."""
    xf = model.prepare(torch.zeros(batch, model.image_channels, size, size, dtype=torch.int64))
    u = torch.rand(batch * size * size, 1 + model.image_channels, dtype=torch.float64)
    best = float("inf")
    for k in range(forwards):
        t0 = time.perf_counter()
        upstream_naive_step(model, xf, u, size // 2, k % size)
        best = min(best, time.perf_counter() - t0)
    return best * size * size


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cifar_run(batch: int, threads: int, rounds: int = 1, forwards: int = 2, size: int = 32, small: bool = False,
              weight_dtype: str = "float32", isa: str | None = None, naive: bool = True,
              save: str | None = None) -> dict:
    """The fused sampler (and, `naive`, the upstream-style naive loop) on the CIFAR PixelCNN++ (random weights:
    the speed does not depend on them), measured in *this* process, which should be a fresh one
    (:func:`cifar_table` starts one per row) so that its peak RSS is that of the fused sampler alone.

    weight_dtype: "float32" or "bfloat16" (the bfloat16 precision, docs/design.md); isa: the instruction-set
    level forced for the fused sampler (None: the best available); save: a path to torch.save the images to.

    Returns seconds for `batch` whole size×size images: "fused" (fastest of `rounds` calls) and "naive"
    (fastest of `rounds` :func:`upstream_naive_seconds`, or None), interleaved; "isa": the level the fused
    products ran on; "rss_model_mb": peak RSS (ru_maxrss) once the model is built and packed, "rss_peak_mb":
    after the first fused call (before the naive loop, whose activation maps are larger).
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = (pixelcnnpp_cifar_small() if small else pixelcnnpp_cifar()).eval()
    noise = draw_noise(model, batch, (size, size), seed=0)
    wd = DTYPES[weight_dtype]
    pack_pixelcnnpp(model, wd)
    maxrss_mb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    out = {"params": sum(p.numel() for p in model.parameters()), "rss_model_mb": maxrss_mb()}
    fused = naive_s = float("inf")
    set_cpu_isa(isa)
    try:
        for k in range(rounds):  # interleaved, so that both see the same load on a shared machine
            t0 = time.perf_counter()
            images = sample_image(model, batch, shape=(size, size), method="fused", noise=noise, weight_dtype=wd)
            fused = min(fused, time.perf_counter() - t0)
            if k == 0:
                out["rss_peak_mb"] = maxrss_mb()
                out["isa"] = last_cpu_isa("pixelcnnpp_generate")
                if save:
                    torch.save(images, save)
            if naive:
                naive_s = min(naive_s, upstream_naive_seconds(model, batch, size, forwards))
    finally:
        set_cpu_isa(None)
    out.update(fused=fused, naive=naive_s if naive else None)
    return out


def cifar_case(batch: int, *, small: bool = False, size: int = 32) -> Case:
    """The CIFAR PixelCNN++ for pytest-benchmark (benchmarks/bench_pixelcnn.py; small: the CI smoke run's
    stand-in, 8x8). Providers: "fused" samples `batch` whole images (float32), "fused-bf16" the same in the
    bfloat16 precision (at the best level here); "naive-step" is one step of the upstream-style naive loop
    (:func:`upstream_naive_step`), size·size of which make the same images.
    params["images"][provider]: images per call, so images/s = images / seconds for all."""
    size = 8 if small else size

    def setup():
        torch.manual_seed(0)
        model = (pixelcnnpp_cifar_small() if small else pixelcnnpp_cifar()).eval()
        noise = draw_noise(model, batch, (size, size), seed=0)
        xf = model.prepare(torch.zeros(batch, model.image_channels, size, size, dtype=torch.int64))
        u = torch.rand(batch * size * size, 1 + model.image_channels, dtype=torch.float64)
        run = lambda wd: lambda: sample_image(model, batch, shape=(size, size), method="fused", noise=noise,
                                              weight_dtype=wd)
        return {"fused": run(torch.float32), "fused-bf16": run(torch.bfloat16),
                "naive-step": lambda: upstream_naive_step(model, xf, u, size // 2, size // 2)}

    name = f"PixelCNNpp {'f=16 R=1 M=2 (smoke)' if small else 'CIFAR f=160 R=5 M=10'} N={batch} {size}x{size}"
    return Case("pixelcnn", name, setup, baseline="naive-step", items=batch,
                params={"dtype": "float32", "batch": batch, "size": size,
                        "images": {"fused": batch, "fused-bf16": batch, "naive-step": batch / (size * size)}},
                isa=lambda p: last_cpu_isa("pixelcnnpp_generate") if p.startswith("fused") else None)


def _precisions() -> list[tuple[str, str | None]]:
    """(weight dtype, forced level) rows of the CIFAR table: float32 at the best level, then bfloat16 at avx512
    and at amx where this machine has them (else at the best level)."""
    levels = [name for name, why in cpu_isas().items() if why is None and name != "avx2"]
    return [("float32", None)] + ([("bfloat16", name) for name in levels] or [("bfloat16", None)])


def cifar_table(batches=(1, 16, 64), threads=(1, 2), rounds: int = 2, forwards: int = 2, samples: int = 10_000,
                printer=print) -> list[dict]:
    """images/s of the fused sampler (float32; bfloat16 at each level this machine has) and the upstream-style
    naive loop (float32, extrapolated), their ratios and the fused sampler's peak RSS for the CIFAR PixelCNN++,
    one fresh process per (batch, threads, precision); the fraction of bfloat16 images (and levels) identical
    to float32's from the same noise; then the time `samples` images take at the fastest measured setting (an
    extrapolation, stated as one). Batch 1 takes the best of `rounds` fused calls and naive estimates, larger
    batches one of each (naive from one forward, measured in the float32 row's process)."""
    info = machine_info()
    printer(f"machine: {info['cpu']} ({info['cores']} cores, {info['capability']}), torch {info['torch']}; "
            f"PixelCNN++ CIFAR config (f=160, R=5, M=10, 32x32 RGB), random weights; load average "
            f"{os.getloadavg()[0]:.2f} at the start")
    printer(f"naive*: upstream-style loop (float32), a full forward per pixel; the fastest of {forwards} forwards "
            "(batch 1; 1 forward at larger batches) x 1024")
    head = (f"{'N':>3} {'thr':>3} {'weights':>8} {'ISA':>6} {'fused img/s':>11} {'naive* img/s':>12} "
            f"{'fused/naive':>11} {'vs fp32':>7} {'same img':>8} {'peak RSS':>9} {'model RSS':>9}")
    printer(head)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this arkern's parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in batches:
            for n in threads:
                base = None
                for weight_dtype, isa in _precisions():
                    first = base is None
                    save = os.path.join(tmp, f"{batch}-{n}-{weight_dtype}-{isa}.pt")
                    spec = json.dumps({"batch": batch, "threads": n, "rounds": rounds if batch == 1 else 1,
                                       "forwards": forwards if batch == 1 else 1, "weight_dtype": weight_dtype,
                                       "isa": isa, "naive": first, "save": save})
                    res = subprocess.run([sys.executable, "-m", "arkern.bench.pixelcnn", "--cifar-run", spec],
                                         env=env, check=True, capture_output=True, text=True)
                    got = json.loads(res.stdout.strip().splitlines()[-1])
                    images = torch.load(save, weights_only=True)
                    if first:
                        base = (got, images)
                    got.update(batch=batch, threads=n, weight_dtype=weight_dtype, naive=base[0]["naive"],
                               same_images=(images == base[1]).flatten(1).all(1).double().mean().item(),
                               same_levels=(images == base[1]).double().mean().item())
                    rows.append(got)
                    printer(f"{batch:>3} {n:>3} {weight_dtype:>8} {got['isa']:>6} {batch / got['fused']:>11.3f} "
                            f"{batch / got['naive']:>12.5f} {got['naive'] / got['fused']:>10.0f}x "
                            f"{base[0]['fused'] / got['fused']:>6.2f}x {got['same_images']:>8.2f} "
                            f"{got['rss_peak_mb']:>6.0f} MB {got['rss_model_mb']:>6.0f} MB")
    printer("same img: fraction of the images identical to float32's from the same noise (levels: "
            + ", ".join(f"{r['same_levels']:.3f}" for r in rows if r["weight_dtype"] != "float32") + ")")
    printer(f"load average {os.getloadavg()[0]:.2f} at the end")
    best = max(rows, key=lambda r: r["batch"] / r["fused"])
    ips = best["batch"] / best["fused"]
    printer(f"{samples} samples: {samples / ips / 60:.1f} min at the fastest measured setting (batch {best['batch']}, "
            f"{best['threads']} thread{'s' if best['threads'] > 1 else ''}, {best['weight_dtype']} {best['isa']}, "
            f"{ips:.3f} img/s), extrapolated")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="PixelCNN sampling: images/s and ratios measured in one run")
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--sizes", nargs="*", type=int, default=[16, 28, 32])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 16, 64])
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cifar", action="store_true",
                        help="the CIFAR PixelCNN++ table instead (fused vs upstream-style naive, peak RSS)")
    parser.add_argument("--cifar-run", metavar="JSON", help=argparse.SUPPRESS)  # one row, in a fresh process
    args = parser.parse_args(argv)
    if args.cifar_run:
        print(json.dumps(cifar_run(**json.loads(args.cifar_run))))
        return
    if args.cifar:
        cifar_table(args.batches, args.threads, min(args.rounds, 2))
        return
    sampling_table({m: MODELS[m] for m in args.models}, args.sizes, args.batches, args.threads, args.rounds)


if __name__ == "__main__":
    main()
