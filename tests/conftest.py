"""Shared fixtures: the backends that can run here (generated from the backend table), and the small models
the tests build (one factory per family; a test passes its own seed so that its samples stay what it checks)."""

from __future__ import annotations

import pytest
import torch

import arkern  # noqa: F401  (defines the ops and loads the extension)
from arkern.backends import backend_unavailable_reason
from arkern.models import GatedPixelCNN, PixelCNN, PixelCNNpp, WaveNet


def kernel_backends(op_backends) -> list:
    """pytest params: every non-reference backend of an op family, skipped with the reason if unavailable.

    Usage: ``@pytest.mark.parametrize("backend", kernel_backends(ops.causal_conv1d.BACKENDS))``.
    """
    params = []
    for name in op_backends.kernels:
        if name == "reference":
            continue
        reason = backend_unavailable_reason(name, "cpu")
        if reason is None:
            reasons = op_backends._static_reasons(name, "cpu")
            reason = "; ".join(reasons) if reasons else None
        marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread: samplers run thousands of tiny ops, and a second thread only
    adds contention on a 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """The Triton interpreter is slow (~10-30 s per case here): CI runs every 6th Triton case of each test
    function (always its first); ARKERN_TRITON_FULL=1 runs them all."""
    import os

    if os.environ.get("ARKERN_TRITON_FULL") == "1":
        return
    seen: dict[str, int] = {}
    for item in items:
        if "triton" not in item.name or "wavenet" in item.nodeid:
            continue
        key = item.nodeid.split("[")[0]
        n = seen.get(key, 0)
        seen[key] = n + 1
        if n % 6:
            item.add_marker(pytest.mark.skip(reason="Triton interpreter subset in CI (ARKERN_TRITON_FULL=1 runs all)"))


# ---------------------------------------------------------------- model factories


def pixelcnn(c: int = 1, dtype: torch.dtype = torch.float64, k: int = 7, hidden: int | None = None,
             blocks: int = 2, *, seed: int = 1) -> PixelCNN:
    """A small PixelCNN in eval mode: C = c, K = k, h = hidden (default 4c), `blocks` residual blocks."""
    torch.manual_seed(seed)
    return PixelCNN(image_channels=c, num_classes=k, hidden_channels=hidden or 4 * c, num_blocks=blocks,
                    dtype=dtype).eval()


def gated_pixelcnn(c: int = 1, dtype: torch.dtype = torch.float64, labels: int | None = None, layers: int = 3,
                   hidden: int | None = None, k: int = 7, *, seed: int = 2) -> GatedPixelCNN:
    """A small Gated PixelCNN in eval mode (class-conditional when `labels` is given)."""
    torch.manual_seed(seed)
    return GatedPixelCNN(image_channels=c, num_classes=k, hidden_channels=hidden or 4 * c, num_layers=layers,
                         num_labels=labels, dtype=dtype).eval()


def image_model(kind: str, c: int, dtype: torch.dtype = torch.float32, labels: int | None = None, k: int = 7,
                hidden: int | None = None, *, seed: int = 3) -> PixelCNN | GatedPixelCNN:
    """kind "pixelcnn" (2 blocks) or "gated" (3 layers, optionally class-conditional), built from one seed;
    "plain": a PixelCNN of plain blocks on inputs in [0, 1] (pixelcnn-pytorch's layout); "coded": a Gated
    PixelCNN with the converters' options (input embedding, own first kernel, shifted vertical input,
    wider head without its leading ReLU; ritheshkumar95/pytorch-vqvae's prior), one channel only."""
    if kind == "pixelcnn":
        return pixelcnn(c, dtype, k, hidden, seed=seed)
    torch.manual_seed(seed)
    h = hidden or 4 * c
    if kind == "plain":
        return PixelCNN(image_channels=c, num_classes=k, hidden_channels=h, num_blocks=2, kernel_size=5,
                        input_kernel_size=3, residual=False, input_range=(0.0, 1.0), dtype=dtype).eval()
    if kind == "coded":
        return GatedPixelCNN(image_channels=c, num_classes=k, hidden_channels=h, num_layers=3, num_labels=labels,
                             input_kernel_size=5, input_embedding=h + 2, vertical_shift="input",
                             head_channels=2 * h + 16, head_relu=False, dtype=dtype).eval()
    return gated_pixelcnn(c, dtype, labels, 3, hidden, k, seed=seed)


def pixelcnnpp(c: int = 3, dtype: torch.dtype = torch.float32, *, filters: int = 8, resnets: int = 1,
               mixtures: int = 2, seed: int = 3, scale: float = 1.0) -> PixelCNNpp:
    """A small PixelCNN++ in eval mode; `scale` multiplies every weight (2.0: sharper mixtures, samples that
    depend on the past)."""
    torch.manual_seed(seed)
    model = PixelCNNpp(image_channels=c, filters=filters, num_resnets=resnets, num_mixtures=mixtures,
                       dtype=dtype).eval()
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
    return model


def wavenet(config: dict, dtype: torch.dtype = torch.float32, *, seed: int = 0) -> WaveNet:
    """A WaveNet of `config` (WaveNetConfig fields) in eval mode."""
    torch.manual_seed(seed)
    return WaveNet(**config).to(dtype).eval()
