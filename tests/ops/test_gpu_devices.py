"""Every GPU backend of every op, on a CUDA device, against the reference (forward, and backward where the
op has autograd). Generated from the ops' backend tables: each op x (triton, cuda) backend it declares.

Without a CUDA device these tests skip, saying what that backend is limited to here (Triton kernels run
in the interpreter, CUDA sources are only compiled). The same test bodies also run on CPU tensors for
the triton backend under TRITON_INTERPRET=1, so that the code a GPU machine would run is exercised in CI.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import pytest
import torch

from arkern.backends import OpBackends, triton_interpret
from arkern.decode import wavenet as dw
from arkern.masks import made_mask
from arkern.models import WaveNet
from arkern.models.wavenet import pack_wavenet
from arkern.ops import (
    causal_conv1d,
    causal_conv1d_update,
    causal_conv1d_varlen_states,
    masked_conv2d,
    masked_linear,
    shifted_conv2d,
    shifted_conv_transpose2d,
    wavenet_generate,
)
from arkern.testing import assert_close, noncontiguous

GPU_BACKENDS = ("triton", "cuda")
_LIMITED = {"triton": "only interpreted here (TRITON_INTERPRET=1, CPU tensors)",
            "cuda": "only compiled here (nvcc, tests/ops/test_cuda_sources.py)"}


def _randn(device: torch.device, dtype: torch.dtype, **shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return {name: torch.randn(shape, dtype=dtype).to(device) for name, shape in shapes.items()}


def _forward_backward(fn: Callable[..., torch.Tensor | tuple], inputs: dict[str, torch.Tensor], backend: str,
                      dtype: torch.dtype, **options: object) -> None:
    """fn(**inputs, **options, backend=...): outputs and every input's gradient against the reference."""
    mine = {k: t.detach().clone().requires_grad_() for k, t in inputs.items()}
    ref = {k: t.detach().clone().requires_grad_() for k, t in inputs.items()}
    outs, outs_ref = fn(**mine, **options, backend=backend), fn(**ref, **options, backend="reference")
    outs = outs if isinstance(outs, tuple) else (outs,)
    outs_ref = outs_ref if isinstance(outs_ref, tuple) else (outs_ref,)
    loss = loss_ref = 0
    for i, (y, yr) in enumerate(zip(outs, outs_ref)):
        assert_close(y, yr, name=f"output {i}", dtype=dtype)
        g = torch.randn_like(yr)
        loss, loss_ref = loss + (y * g).sum(), loss_ref + (yr * g).sum()
    loss.backward()
    loss_ref.backward()
    for name in inputs:
        assert_close(mine[name].grad, ref[name].grad, name=f"grad {name}", dtype=dtype, scale=4)


def check_masked_conv2d(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    for mask_type, groups, dilation, k in (("A", 3, 1, (3, 5)), ("B", 1, 2, (3, 3))):
        t = _randn(device, dtype, x=(2, 3, 5, 4), weight=(6, 3, *k), bias=(6,))
        t["x"] = noncontiguous(t["x"])
        _forward_backward(masked_conv2d, t, backend, dtype, mask_type=mask_type, color_groups=groups,
                          dilation=dilation)


def check_shifted_conv2d(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    for shift, k, stride in (("down", (2, 3), 1), ("downright", (2, 2), 2)):
        t = _randn(device, dtype, x=(2, 3, 5, 4), weight=(4, 3, *k), bias=(4,))
        t["x"] = noncontiguous(t["x"])
        _forward_backward(shifted_conv2d, t, backend, dtype, shift=shift, stride=stride)


def check_shifted_conv_transpose2d(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    for shift, k, stride in (("down", (2, 3), 2), ("downright", (2, 2), 1)):
        t = _randn(device, dtype, x=(2, 3, 3, 2), weight=(3, 4, *k), bias=(4,))
        t["x"] = noncontiguous(t["x"])
        _forward_backward(shifted_conv_transpose2d, t, backend, dtype, shift=shift, stride=stride)


def check_causal_conv1d(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    # grouped + dilated + silu + initial state + final state; then depthwise without extras
    t = _randn(device, dtype, x=(2, 6, 9), weight=(6, 3, 3), bias=(6,), initial_state=(2, 6, 4))
    t["x"] = noncontiguous(t["x"])
    _forward_backward(causal_conv1d, t, backend, dtype, dilation=2, groups=2, activation="silu",
                      return_final_state=True)
    t = _randn(device, dtype, x=(3, 5, 11), weight=(5, 1, 4))
    _forward_backward(causal_conv1d, t, backend, dtype, groups=5)


def check_causal_conv1d_update(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    # ring buffer over a state pool with a padding row, then a shift register with two tokens per call
    w, b = torch.randn(4, 1, 3, dtype=dtype).to(device), torch.randn(4, dtype=dtype).to(device)
    pool = torch.randn(5, 4, 6, dtype=dtype).to(device)
    seqlens = torch.tensor([7, 0, 3], dtype=torch.int32, device=device)
    rows = torch.tensor([3, -1, 0], dtype=torch.int32, device=device)
    x = torch.randn(3, 4, dtype=dtype).to(device)
    states = [pool.clone(), pool.clone()]
    ys = [causal_conv1d_update(x, s, w, b, 2, 4, "silu", seqlens, rows, backend=name)
          for s, name in zip(states, (backend, "reference"))]
    assert_close(ys[0], ys[1], name="ring y", dtype=dtype)
    assert_close(states[0], states[1], name="ring state", dtype=dtype)
    w, b = torch.randn(6, 2, 3, dtype=dtype).to(device), torch.randn(6, dtype=dtype).to(device)
    x = torch.randn(2, 4, 2, dtype=dtype).to(device)
    init = torch.randn(2, 4, 2, dtype=dtype).to(device)
    states = [init.clone(), init.clone()]
    ys = [causal_conv1d_update(x, s, w, b, 1, 2, backend=name) for s, name in zip(states, (backend, "reference"))]
    assert_close(ys[0], ys[1], name="shift-register y", dtype=dtype)
    assert_close(states[0], states[1], name="shift-register state", dtype=dtype)


def check_masked_linear(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    t = _randn(device, dtype, x=(5, 7), weight=(6, 7), bias=(6,))
    t["x"] = noncontiguous(t["x"])
    mask = made_mask(torch.arange(7) % 3 + 1, torch.arange(6) % 3 + 1).to(device)
    _forward_backward(masked_linear, t, backend, dtype, mask=mask)


def check_wavenet_generate(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    """Samples equal, logits close, ring buffers and previous samples equal to the reference on CPU."""
    torch.manual_seed(0)
    model = WaveNet(num_layers=3, residual_channels=8, skip_channels=12, num_classes=20, max_dilation=2,
                    cond_channels=2, cond_hop=3, global_channels=2).eval()
    B, T = 3, 12
    local, glob = torch.randn(B, 2, 4), torch.randn(B, 2)
    noise = torch.rand(B, T, dtype=torch.float64)
    warp = dict(temperature=1.2, top_k=9, top_p=0.9)
    runs = {}
    for name, dev in (("reference", torch.device("cpu")), (backend, device)):
        m = model.to(dev)
        state = dw.WaveNetState.new(m, B, cond=local.to(dev), gcond=glob.to(dev), length=T, dtype=torch.float32)
        out = wavenet_generate(pack_wavenet(m, dtype), state.rings, state.prev, 0, noise.to(dev), cond=state.cond,
                               cond_hop=state.cond_hop, gbias=state.gcond, return_logits=True, backend=name, **warp)
        runs[name] = [t.cpu() for t in (*out, state.prev, *state.rings)]
    mine, ref = runs[backend], runs["reference"]
    assert torch.equal(mine[0], ref[0]), "samples differ"
    assert_close(mine[1], ref[1], name="logits", dtype=torch.float32)
    assert torch.equal(mine[2], ref[2]), "previous samples differ"
    for i, (a, e) in enumerate(zip(mine[3:], ref[3:])):
        assert_close(a, e, name=f"ring {i}", dtype=torch.float32)


def check_causal_conv1d_varlen_states(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    cu = torch.tensor([0, 5, 5, 6, 15], dtype=torch.int32, device=device)  # longer, empty, shorter, longer
    t = _randn(device, dtype, x=(15, 20))
    t["x"] = noncontiguous(t["x"])
    _forward_backward(lambda x, backend: causal_conv1d_varlen_states(x, cu, 4, backend=backend), t, backend, dtype)


def _table(module: str, name: str = "BACKENDS") -> OpBackends:
    return getattr(importlib.import_module(f"arkern.ops.{module}"), name)


# op name -> (its backend table, its check)
OPS: dict[str, tuple[OpBackends, Callable[..., None]]] = {
    "masked_conv2d": (_table("masked_conv2d"), check_masked_conv2d),
    "shifted_conv2d": (_table("shifted_conv2d"), check_shifted_conv2d),
    "shifted_conv_transpose2d": (_table("shifted_conv2d", "BACKENDS_T"), check_shifted_conv_transpose2d),
    "causal_conv1d": (_table("causal_conv1d"), check_causal_conv1d),
    "causal_conv1d_update": (_table("causal_conv1d", "UPDATE_BACKENDS"), check_causal_conv1d_update),
    "masked_linear": (_table("masked_linear"), check_masked_linear),
    "wavenet_generate": (_table("wavenet_decode"), check_wavenet_generate),
    "causal_conv1d_varlen_states": (_table("causal_conv1d_varlen"), check_causal_conv1d_varlen_states),
}
_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _cases() -> list:
    params = []
    for op, (table, _) in OPS.items():
        for backend in GPU_BACKENDS:
            kernel = table.kernels.get(backend)
            if kernel is None:
                continue
            for dtype in (d for d in _DTYPES if d in kernel.dtypes):
                dname = str(dtype).replace("torch.", "")
                params.append(pytest.param(op, backend, "cuda", dtype, id=f"{op}-{backend}-cuda-{dname}"))
                if backend == "triton" and dtype != torch.float64:  # the interpreter run: CI coverage of the body
                    params.append(pytest.param(op, backend, "cpu", dtype, id=f"{op}-{backend}-interpreter-{dname}"))
    return params


def test_every_gpu_backend_of_every_op_is_covered():
    # a new op family with a triton/cuda kernel must get a check here, or it would silently go untested
    import arkern.ops

    declared = set()
    for info in pkgutil.iter_modules(arkern.ops.__path__):
        module = importlib.import_module(f"arkern.ops.{info.name}")
        for table in vars(module).values():
            if isinstance(table, OpBackends) and any(b in table.kernels for b in GPU_BACKENDS):
                declared.add(table.name)
    assert declared == set(OPS), f"ops with GPU backends {sorted(declared)} vs checked here {sorted(OPS)}"
    assert all(table.name == op for op, (table, _) in OPS.items())


@pytest.mark.parametrize("op,backend,device,dtype", _cases())
def test_gpu_backend_matches_reference(op, backend, device, dtype):
    table, check = OPS[op]
    if device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip(f"no CUDA device: {op} on {backend} is {_LIMITED[backend]}")
    elif not triton_interpret():
        pytest.skip(f"{op} on triton runs on CPU tensors only in the interpreter: set TRITON_INTERPRET=1")
    dev = torch.device(device)
    reasons = table.not_supported_reasons(backend, dev, dtype)
    if reasons:
        pytest.skip(f"{op} on {backend} cannot run here: " + "; ".join(reasons))
    check(backend, dev, dtype)
