"""shifted_conv2d / shifted_conv_transpose2d: every backend against the reference, forward and backward;
exact causality (also through stride-2 down- and up-sampling); opcheck; torch.compile; layers; bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from arkern.nn import ShiftedConv2d, ShiftedConvTranspose2d
from arkern.ops import shifted_conv2d, shifted_conv_transpose2d
from arkern.ops.shifted_conv2d import BACKENDS, BACKENDS_T
from arkern.reference import shifted_conv2d as ref
from arkern.testing import assert_close, noncontiguous
from tests.conftest import kernel_backends

KERNELS = kernel_backends(BACKENDS)
KERNELS_T = kernel_backends(BACKENDS_T)
KERNEL_SIZES = [(2, 3), (2, 2), (1, 3), (1, 1), (3, 5)]
OPS = {"conv": (shifted_conv2d, BACKENDS), "transpose": (shifted_conv_transpose2d, BACKENDS_T)}


def _shifts(kw):
    return ["down", "downright"] if kw % 2 else ["downright"]


def _cpu_available(table=BACKENDS) -> bool:
    return not table.not_supported_reasons("cpu", torch.device("cpu"), torch.float64)


def _inputs(kind, n, cin, cout, h, w, k, dtype, *, bias=True, contiguous=True):
    x = torch.randn(n, cin, h, w, dtype=dtype)
    wshape = (cout, cin, *k) if kind == "conv" else (cin, cout, *k)
    wt = torch.randn(wshape, dtype=dtype)
    b = torch.randn(cout, dtype=dtype) if bias else None
    if not contiguous:
        x, wt = noncontiguous(x, dim=3), noncontiguous(wt, dim=0)
    return x, wt, b


def _check(kind, backend, x, w, b, shift, stride, dtype):
    fn = OPS[kind][0]
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    refs = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = fn(*leaves, shift, stride, backend=backend)
    yr = fn(*refs, shift, stride, backend="reference")
    assert_close(y, yr, name=f"{kind} y", dtype=dtype)
    g = torch.randn_like(yr)
    y.backward(g)
    yr.backward(g)
    for name, a, e in zip(("grad x", "grad weight", "grad bias"), leaves, refs):
        if a is not None:
            assert_close(a.grad, e.grad, name=f"{kind} {name}", dtype=dtype, scale=4)


# ---------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("k", KERNEL_SIZES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (13, 2)])
def test_reference_output_size_and_padding(k, stride, h, w):
    for shift in _shifts(k[1]):
        x, wt, b = _inputs("conv", 2, 3, 4, h, w, k, torch.float64)
        y = ref.shifted_conv2d(x, wt, b, shift, stride)
        assert y.shape == (2, 4, -(-h // stride), -(-w // stride))
        # explicitly: output (i, j) = bias + sum over taps of w * x at (i*s + kh - (kH-1), j*s + kw - left)
        left = (k[1] - 1) // 2 if shift == "down" else k[1] - 1
        expect = b.view(1, -1).repeat(2, 1)
        i, j = y.shape[2] - 1, y.shape[3] - 1
        for kh in range(k[0]):
            for kw in range(k[1]):
                r, c = i * stride + kh - (k[0] - 1), j * stride + kw - left
                if 0 <= r < h and 0 <= c < w:
                    expect = expect + x[:, :, r, c] @ wt[:, :, kh, kw].t()
        assert_close(y[:, :, i, j], expect, name="last output pixel")


@pytest.mark.parametrize("k", [(2, 3), (2, 2), (3, 5)])
@pytest.mark.parametrize("stride", [1, 2])
def test_reference_transpose_matches_pixelcnnpp_crop(k, stride):
    # PixelCNN++ (pytorch port): deconv(output_padding=stride-1), then x[:, :, :H_full-kH+1, l:W_full-l]
    # ('down', l=(kW-1)//2) or x[:, :, :H_full-kH+1, :W_full-kW+1] ('downright').
    for shift in _shifts(k[1]):
        x, wt, b = _inputs("transpose", 2, 3, 4, 5, 6, k, torch.float64)
        full = F.conv_transpose2d(x, wt, b, stride=stride, output_padding=stride - 1)
        hf, wf = full.shape[-2:]
        if shift == "down":
            left = (k[1] - 1) // 2
            expect = full[:, :, : hf - k[0] + 1, left: wf - left]
        else:
            expect = full[:, :, : hf - k[0] + 1, : wf - k[1] + 1]
        y = ref.shifted_conv_transpose2d(x, wt, b, shift, stride)
        assert y.shape == (2, 4, 5 * stride, 6 * stride)
        assert_close(y, expect, name="transpose crop")


# ---------------------------------------------------------------- kernels against the reference


@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", KERNEL_SIZES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("h,w,cin,cout", [(1, 1, 1, 1), (2, 5, 3, 17), (7, 13, 17, 3)])
def test_matches_reference(kind, backend, dtype, k, stride, h, w, cin, cout):
    for shift in _shifts(k[1]):
        _check(kind, backend, *_inputs(kind, 2, cin, cout, h, w, k, dtype), shift, stride, dtype)


@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("shift,k", [("down", (2, 3)), ("downright", (2, 2))])
@pytest.mark.parametrize("stride", [1, 2])
def test_batch1_no_bias_noncontiguous(kind, backend, shift, k, stride):
    _check(kind, backend, *_inputs(kind, 1, 5, 6, 13, 7, k, torch.float64, bias=False), shift, stride,
           torch.float64)
    _check(kind, backend, *_inputs(kind, 3, 5, 6, 7, 13, k, torch.float64, contiguous=False), shift, stride,
           torch.float64)


@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("stride", [1, 2])
def test_empty_batch(kind, backend, stride):
    _check(kind, backend, *_inputs(kind, 0, 3, 4, 5, 6, (2, 3), torch.float64), "down", stride, torch.float64)


@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.parametrize("backend", KERNELS)
def test_larger_batch_uses_threads(kind, backend):
    # N >= threads runs images in parallel (and reduces weight gradients across threads)
    if backend == "triton":
        pytest.skip("threading is a property of the C++ kernel; the Triton cases run elsewhere in this file")
    _check(kind, backend, *_inputs(kind, 9, 8, 12, 16, 16, (2, 3), torch.float32), "down", 2, torch.float32)


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["conv", "transpose"]), n=st.integers(1, 3), cin=st.integers(1, 6),
       cout=st.integers(1, 6), h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 3),
       kw=st.integers(1, 4), downright=st.booleans(), stride=st.sampled_from([1, 2]), bias=st.booleans())
def test_property_cpu(kind, n, cin, cout, h, w, kh, kw, downright, stride, bias):
    if not _cpu_available(OPS[kind][1]):
        pytest.skip("cpu backend unavailable")
    shift = "downright" if downright or kw % 2 == 0 else "down"
    x, wt, b = _inputs(kind, n, cin, cout, h, w, (kh, kw), torch.float64, bias=bias)
    _check(kind, "cpu", x, wt, b, shift, stride, torch.float64)


# ---------------------------------------------------------------- causality


def _assert_causal(y, x, shift, name, last):
    """grad of y[0, :, i, j] w.r.t. x is exactly zero on input rows after last(i) (and for 'downright'
    on columns after last(j)), and on every other image of the batch."""
    h, w = y.shape[-2:]
    for i in range(h):
        for j in range(w):
            (g,) = torch.autograd.grad(y[0, :, i, j].sum(), x, retain_graph=True)
            assert torch.all(g[:, :, last(i) + 1:] == 0), f"{name}: output ({i}, {j}) sees later rows"
            assert torch.all(g[1:] == 0), f"{name}: output of image 0 sees other images"
            if shift == "downright":
                assert torch.all(g[:, :, :, last(j) + 1:] == 0), f"{name}: output ({i}, {j}) sees later columns"


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("shift,k", [("down", (2, 3)), ("downright", (2, 2)), ("down", (3, 5))])
@pytest.mark.parametrize("stride", [1, 2])
def test_causality(backend, shift, k, stride):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, *k, dtype=torch.float64)
    y = shifted_conv2d(x, w, None, shift, stride, backend=backend)
    _assert_causal(y, x, shift, "conv", lambda i: i * stride)
    wt = torch.randn(3, 4, *k, dtype=torch.float64)
    y = shifted_conv_transpose2d(x, wt, None, shift, stride, backend=backend)
    _assert_causal(y, x, shift, "transpose", lambda i: i // stride)


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("shift,k", [("down", (2, 3)), ("downright", (2, 2))])
def test_causality_down_then_up(backend, shift, k):
    # the PixelCNN++ U-Net path: stride-2 shifted conv, then stride-2 transposed conv back to full size
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(5, 3, *k, dtype=torch.float64)
    w2 = torch.randn(5, 3, *k, dtype=torch.float64)
    mid = torch.tanh(shifted_conv2d(x, w1, None, shift, 2, backend=backend))
    y = shifted_conv_transpose2d(mid, w2, None, shift, 2, backend=backend)
    assert y.shape == (2, 3, 8, 8)
    _assert_causal(y, x, shift, "down+up", lambda i: i)
    if shift == "down":  # the path is not trivially blind: output (i, j) sees input row i
        (g,) = torch.autograd.grad(y[0, :, 5, 4].sum(), x)
        assert g[0, :, 4:6].abs().sum() > 0


# ---------------------------------------------------------------- registration, compile, layers


@pytest.mark.parametrize("shift,k,stride", [("down", (2, 3), 1), ("downright", (2, 2), 2)])
def test_opcheck(shift, k, stride):
    if not _cpu_available():
        pytest.skip("cpu backend unavailable")
    x, w, b = _inputs("conv", 2, 3, 4, 5, 6, k, torch.float64)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), shift, stride)
    torch.library.opcheck(torch.ops.arkern.shifted_conv2d.default, args)
    g = torch.randn(2, 4, -(-5 // stride), -(-6 // stride), dtype=torch.float64)
    torch.library.opcheck(torch.ops.arkern.shifted_conv2d_backward.default,
                          (g, x.detach(), w.detach(), shift, stride, [True, True, True]))
    x, w, b = _inputs("transpose", 2, 3, 4, 5, 6, k, torch.float64)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), shift, stride)
    torch.library.opcheck(torch.ops.arkern.shifted_conv_transpose2d.default, args)
    g = torch.randn(2, 4, 5 * stride, 6 * stride, dtype=torch.float64)
    torch.library.opcheck(torch.ops.arkern.shifted_conv_transpose2d_backward.default,
                          (g, x.detach(), w.detach(), shift, stride, [True, False, True]))


def test_compile_fullgraph():
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        ShiftedConv2d(3, 8, (2, 3), "down"), torch.nn.ELU(),
        ShiftedConv2d(8, 8, (2, 2), "downright", stride=2), torch.nn.ELU(),
        ShiftedConvTranspose2d(8, 4, (2, 3), "down", stride=2),
    )
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(net, fullgraph=True)
    assert_close(compiled(x), net(x), name="compiled")


def test_layers_are_drop_in():
    conv = torch.nn.Conv2d(4, 6, (2, 3)).double()
    layer = ShiftedConv2d(4, 6, (2, 3), "down").double()
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64)
    assert_close(layer(x), ref.shifted_conv2d(x, conv.weight, conv.bias, "down"), name="ShiftedConv2d")
    assert isinstance(layer, torch.nn.Conv2d) and set(layer.state_dict()) == {"weight", "bias"}
    deconv = torch.nn.ConvTranspose2d(4, 6, (2, 2), stride=2).double()
    up = ShiftedConvTranspose2d(4, 6, (2, 2), "downright", bias=True).double()
    up.load_state_dict(deconv.state_dict())
    assert up(x).shape == (2, 6, 10, 14)
    assert_close(up(x), ref.shifted_conv_transpose2d(x, deconv.weight, deconv.bias, "downright", 2),
                 name="ShiftedConvTranspose2d")
    assert "shift='downright'" in repr(up)


@pytest.mark.parametrize("shift,k,stride", [("down", (3, 5), 1), ("downright", (2, 2), 2)])
def test_layer_dense_training_path(shift, k, stride):
    """`dense` (the reference's padded F.conv2d without the op's checks): same output and gradients as the op,
    and it accepts autocast's mixed dtypes (the MNIST training path)."""
    layer = ShiftedConv2d(4, 6, k, shift, stride=stride).double()
    x = noncontiguous(torch.randn(2, 4, 5, 7, dtype=torch.float64))
    grads = []
    for dense in (False, True):
        layer.dense = dense
        xg = x.detach().requires_grad_()
        y = layer(xg)
        y.backward(torch.sin(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape))
        grads.append((y.detach(), xg.grad, layer.weight.grad, layer.bias.grad))
        layer.zero_grad(set_to_none=True)
    for name, got, want in zip(("y", "grad x", "grad weight", "grad bias"), grads[1], grads[0], strict=True):
        assert_close(got, want, name=f"dense {name}")
    layer = layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.float().bfloat16())
    layer.dense = False
    assert_close(y.float(), layer(x.float()), name="dense under bf16 autocast", dtype=torch.bfloat16, scale=4.0)


@pytest.mark.parametrize("make,match", [
    (lambda: ShiftedConv2d(3, 4, (2, 2), "down"), "odd kernel width"),
    (lambda: ShiftedConv2d(3, 4, (2, 3), "up"), "shift must be one of"),
    (lambda: ShiftedConv2d(3, 4, (2, 3), stride=3), "stride must be 1 or 2"),
    (lambda: ShiftedConv2d(3, 4, (2, 3), stride=(1, 2)), "stride must be 1 or 2"),
    (lambda: ShiftedConv2d(0, 4), "in_channels must be a positive int"),
    (lambda: ShiftedConvTranspose2d(3, -1), "out_channels must be a positive int"),
    (lambda: ShiftedConvTranspose2d(3, 4, (2, 3, 1)), "kernel_size must be"),
])
def test_layer_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------- bad input


def _bad(kind):
    x, w, b = _inputs(kind, 2, 3, 4, 5, 6, (2, 3), torch.float64)
    return x, w, b


@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.parametrize("call,exc,match", [
    (lambda f, x, w, b: f(x[0], w, b, "down"), ValueError, "x must have 4 dimensions"),
    (lambda f, x, w, b: f(x, w[0], b, "down"), ValueError, "weight must have 4 dimensions"),
    (lambda f, x, w, b: f(x[:, :2], w, b, "down"), ValueError, "x has 2 channels but weight expects"),
    (lambda f, x, w, b: f(x, w, b[:2], "down"), ValueError, "bias must have shape"),
    (lambda f, x, w, b: f(x, w, b, "up"), ValueError, "shift must be one of"),
    (lambda f, x, w, b: f(x, w, b, "down", 3), ValueError, "stride must be one of"),
    (lambda f, x, w, b: f(x, w, b, "down", 1.0), TypeError, "stride must be an int"),
    (lambda f, x, w, b: f(x, w[..., :2], b, "down"), ValueError, "odd kernel width"),
    (lambda f, x, w, b: f(x.half(), w.half(), b.half(), "down"), TypeError, "x has dtype float16"),
    (lambda f, x, w, b: f(x, w.float(), b, "down"), TypeError, "weight has dtype float32"),
    (lambda f, x, w, b: f(x, w, b.float(), "down"), TypeError, "bias has dtype float32"),
    (lambda f, x, w, b: f(x.int(), w, b, "down"), TypeError, "x must have dtype"),
    (lambda f, x, w, b: f(x, w, b, "down", backend="nope"), ValueError, "backend must be one of"),
    (lambda f, x, w, b: f(x[:, :, :0], w, b, "down"), ValueError, "x must have height and width >= 1"),
    (lambda f, x, w, b: f(x[:, :0], w[:0, :0], b, "down"), ValueError, "channel counts must be >= 1"),
])
def test_bad_input(kind, call, exc, match):
    x, w, b = _bad(kind)
    with pytest.raises(exc, match=match):
        call(OPS[kind][0], x, w, b)


@pytest.mark.parametrize("kind", ["conv", "transpose"])
def test_forced_cpu_backend_rejects_bfloat16(kind):
    if not _cpu_available(OPS[kind][1]):
        pytest.skip("cpu backend unavailable")
    x, w, b = _bad(kind)
    with pytest.raises(RuntimeError, match="bfloat16 is not supported"):
        OPS[kind][0](x.bfloat16(), w.bfloat16(), b.bfloat16(), "down", backend="cpu")


def test_bad_input_device_mix():
    x, w, b = _bad("conv")
    with pytest.raises(ValueError, match="weight is on meta but x is on cpu"):
        shifted_conv2d(x, w.to("meta"), b, "down")
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        shifted_conv_transpose2d(x, torch.randn(3, 4, 2, 3, dtype=torch.float64), b.to("meta"), "down")


def test_kernel_checks_bounds_directly():
    # the C++ kernels re-check what validation guarantees, so a direct torch.ops call cannot go out of bounds
    if not _cpu_available():
        pytest.skip("cpu backend unavailable")
    x, w, b = _bad("conv")
    with pytest.raises(RuntimeError, match="odd kernel width"):
        torch.ops.arkern.shifted_conv2d(x, w[..., :2], b, "down", 1)
    with pytest.raises(RuntimeError, match="input channels"):
        torch.ops.arkern.shifted_conv2d(x[:, :2], w, b, "down", 1)
    with pytest.raises(RuntimeError, match="stride must be 1 or 2"):
        torch.ops.arkern.shifted_conv_transpose2d(x, w.transpose(0, 1), b, "down", 3)
    with pytest.raises(RuntimeError, match="grad_out has shape"):
        torch.ops.arkern.shifted_conv2d_backward(x, x, w, "down", 1, [True, True, True])
