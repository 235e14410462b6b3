"""Backend choice: the table, forced backends, ARKERN_BACKEND, and life without the C++ extension."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import arkern
from arkern.backends import BackendUnavailableError, backend_unavailable_reason
from arkern.masks import made_mask
from arkern.ops import masked_linear


def _args():
    x = torch.randn(3, 4)
    w = torch.randn(5, 4)
    return x, w, None, made_mask(torch.arange(4) + 1, torch.arange(5) % 4 + 1)


def test_reference_always_available():
    assert "reference" in arkern.available_backends("cpu")
    assert backend_unavailable_reason("reference", "cpu") is None


def test_cpu_tensors_never_pick_gpu_backends():
    assert backend_unavailable_reason("cuda", "cpu") is not None
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert backend_unavailable_reason("triton", "cpu") is not None


def test_last_backend_reports_what_ran():
    masked_linear(*_args(), backend="reference")
    assert arkern.last_backend("masked_linear") == "reference"


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        masked_linear(*_args(), backend="fortran")


def test_forced_unavailable_backend_lists_reasons():
    with pytest.raises(BackendUnavailableError, match="(?s)backend 'cuda' cannot run this call.*no 'cuda' kernel"):
        masked_linear(*_args(), backend="cuda")


def test_env_override(monkeypatch):
    monkeypatch.setenv("ARKERN_BACKEND", "reference")
    masked_linear(*_args())
    assert arkern.last_backend("masked_linear") == "reference"
    monkeypatch.setenv("ARKERN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError):
        masked_linear(*_args())


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # triton would join 'cpu'
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**base, **env})


def test_import_without_extension_uses_reference_and_says_so_once():
    code = ("import torch, arkern\n"
            "from arkern.ops import masked_linear\n"
            "from arkern.masks import made_mask\n"
            "m = made_mask(torch.arange(4) + 1, torch.arange(5) % 4 + 1)\n"
            "y = masked_linear(torch.randn(3, 4), torch.randn(5, 4), None, m)\n"
            "y = masked_linear(torch.randn(3, 4), torch.randn(5, 4), None, m)\n"
            "print(arkern.last_backend('masked_linear'), arkern.available_backends('cpu'))\n"
            "try:\n"
            "    masked_linear(torch.randn(3, 4), torch.randn(5, 4), None, m, backend='cpu')\n"
            "except arkern.BackendUnavailableError as e:\n"
            "    print('ERR', e)\n")
    proc = _run(code, ARKERN_USE_CPP="0")
    assert proc.returncode == 0, proc.stderr
    assert "reference ['reference']" in proc.stdout
    assert "ERR" in proc.stdout and "ARKERN_USE_CPP=0" in proc.stdout
    assert proc.stderr.count("only the 'reference' backend is available") == 1
