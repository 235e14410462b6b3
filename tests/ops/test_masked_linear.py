"""masked_linear: every backend against the reference, forward and backward; masks; bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arkern.masks import made_mask
from arkern.ops import masked_linear
from arkern.ops.masked_linear import BACKENDS
from arkern.testing import assert_close, noncontiguous
from tests.conftest import kernel_backends

KERNELS = kernel_backends(BACKENDS)


def _inputs(n, fin, fout, dtype, *, bias=True, contiguous=True):
    x = torch.randn(n, fin, dtype=dtype)
    w = torch.randn(fout, fin, dtype=dtype)
    b = torch.randn(fout, dtype=dtype) if bias else None
    if not contiguous:
        x, w = noncontiguous(x), noncontiguous(w, dim=0)
    mask = made_mask(torch.randint(1, 5, (fin,)), torch.randint(1, 5, (fout,)), strict=bool(fout % 2))
    return x, w, b, mask


def _check(backend, x, w, b, mask, dtype):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    refs = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = masked_linear(*leaves, mask, backend=backend)
    yr = masked_linear(*refs, mask, backend="reference")
    assert_close(y, yr, name="y", dtype=dtype)
    g = torch.randn_like(yr)
    y.backward(g)
    yr.backward(g)
    for name, a, e in zip(("grad x", "grad weight", "grad bias"), leaves, refs):
        if a is not None:
            assert_close(a.grad, e.grad, name=name, dtype=dtype, scale=4)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (1, 7, 13), (5, 17, 31), (33, 64, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference(backend, dtype, n, fin, fout, bias):
    _check(backend, *_inputs(n, fin, fout, dtype, bias=bias), dtype)


@pytest.mark.parametrize("backend", KERNELS)
def test_noncontiguous_and_leading_dims(backend):
    x, w, b, mask = _inputs(6, 19, 11, torch.float64, contiguous=False)
    _check(backend, x, w, b, mask, torch.float64)
    x3 = torch.randn(2, 3, 19, dtype=torch.float64)
    assert_close(masked_linear(x3, w, b, mask, backend=backend),
                 masked_linear(x3, w, b, mask, backend="reference"), name="3-D x")


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
def test_masked_weights_get_exactly_zero_gradient(backend):
    x, w, b, mask = _inputs(4, 9, 12, torch.float64)
    w.requires_grad_()
    masked_linear(x, w, b, mask, backend=backend).sum().backward()
    assert torch.all(w.grad[~mask] == 0)


def test_made_autoregressive_property():
    # output d of a MADE net (strict output mask) never depends on inputs with degree >= d
    d = 6
    deg_in = torch.arange(1, d + 1)
    deg_h = torch.arange(32) % (d - 1) + 1
    m1, m2 = made_mask(deg_in, deg_h), made_mask(deg_h, deg_in, strict=True)
    w1, w2 = torch.randn(32, d, dtype=torch.float64), torch.randn(d, 32, dtype=torch.float64)
    x = torch.randn(1, d, dtype=torch.float64, requires_grad=True)
    y = masked_linear(torch.tanh(masked_linear(x, w1, None, m1)), w2, None, m2)
    for out in range(d):
        (g,) = torch.autograd.grad(y[0, out], x, retain_graph=True)
        assert torch.all(g[0, out:] == 0), f"output {out} sees inputs {out}.."


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), fin=st.integers(1, 40), fout=st.integers(1, 40), bias=st.booleans())
def test_property_cpu(n, fin, fout, bias):
    if BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.float64):
        pytest.skip("cpu backend unavailable")
    _check("cpu", *_inputs(n, fin, fout, torch.float64, bias=bias), torch.float64)


def test_opcheck():
    if BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.float64):
        pytest.skip("cpu backend unavailable")
    x, w, b, mask = _inputs(3, 5, 4, torch.float64)
    torch.library.opcheck(torch.ops.arkern.masked_linear.default,
                          (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), mask))


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, w, b, m: masked_linear(x, w[:, :3], b, m), ValueError, "x has 5 features"),
    (lambda x, w, b, m: masked_linear(x, w, b[:2], m), ValueError, "bias must have shape"),
    (lambda x, w, b, m: masked_linear(x, w, b, m.float()), TypeError, "mask must have dtype"),
    (lambda x, w, b, m: masked_linear(x, w, b, m[:, :2]), ValueError, "mask must have shape"),
    (lambda x, w, b, m: masked_linear(x, w.float(), b, m), TypeError, "weight has dtype"),
    (lambda x, w, b, m: masked_linear(x, w[0], b, m), ValueError, "weight must have 2 dimensions"),
    (lambda x, w, b, m: masked_linear(x.int(), w, b, m), TypeError, "x must have dtype"),
    (lambda x, w, b, m: masked_linear(x, w, b, m, backend="nope"), ValueError, "backend must be one of"),
    (lambda x, w, b, m: masked_linear(x.half(), w.half(), b.half(), m, backend="cpu"), RuntimeError,
     "float16 is not supported"),
])
def test_bad_input(call, exc, match):
    x, w, b, mask = _inputs(3, 5, 4, torch.float64)
    with pytest.raises(exc, match=match):
        call(x, w, b, mask)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_arbitrary_mask(backend, dtype):
    # a random mask is not prefix-shaped in any column order: exercises the run-walking kernels
    x, w, b, _ = _inputs(7, 29, 23, dtype)
    mask = torch.rand(23, 29) < 0.4
    mask[3] = False  # a row that keeps nothing
    _check(backend, x, w, b, mask, dtype)


def test_nn_layer_is_drop_in_for_linear():
    from arkern.nn import MaskedLinear

    lin = torch.nn.Linear(10, 6).double()
    layer = MaskedLinear(10, 6).double()
    layer.load_state_dict(lin.state_dict())  # nn.Linear checkpoints load (mask is not a state_dict key)
    x = torch.randn(4, 10, dtype=torch.float64)
    assert_close(layer(x), lin(x), name="all-ones mask")
    layer.set_degrees(torch.arange(10) % 5 + 1, torch.arange(6) % 4 + 1)
    assert_close(layer(x), masked_linear(x, lin.weight, lin.bias, layer.mask, backend="reference"), name="MADE")
    with pytest.raises(ValueError, match="mask must have shape"):
        layer.set_mask(torch.ones(3, 3, dtype=torch.bool))


def test_compile_fullgraph():
    from arkern.nn import MaskedLinear

    layer = MaskedLinear(12, 8)
    layer.set_degrees(torch.arange(12) % 6 + 1, torch.arange(8) % 5 + 1)
    x = torch.randn(5, 12)
    compiled = torch.compile(layer, fullgraph=True)
    assert_close(compiled(x), layer(x), name="compiled")


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_reaches_only_unmasked_outputs(backend, bad):
    # masked entries are skipped, not multiplied by zero (0 * NaN = NaN)
    x, w, b, mask = _inputs(3, 9, 12, torch.float64)
    x[1, 4] = bad
    y = masked_linear(x, w, b, mask, backend=backend)
    assert torch.isfinite(y[[0, 2]]).all()
    assert torch.equal(torch.isfinite(y[1]), ~mask[:, 4])
