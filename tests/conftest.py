"""Shared fixtures: the backends that can run here, generated from the backend table."""

from __future__ import annotations

import pytest
import torch

import arkern  # noqa: F401  (defines the ops and loads the extension)
from arkern.backends import backend_unavailable_reason


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
