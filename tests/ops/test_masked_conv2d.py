"""masked_conv2d: every backend against the reference, forward and gradients; causality; layer; bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arkern.masks import pixelcnn_mask
from arkern.nn import MaskedConv2d
from arkern.ops import masked_conv2d
from arkern.ops.masked_conv2d import BACKENDS
from arkern.testing import assert_close, noncontiguous
from tests.conftest import kernel_backends

KERNELS = kernel_backends(BACKENDS)


def _cpu_available() -> bool:
    return not BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.float64)


def _inputs(n, cin, cout, h, w, k, dtype, *, bias=True):
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(n, cin, h, w, dtype=dtype)
    wt = torch.randn(cout, cin, kh, kw, dtype=dtype) / (cin * kh * kw) ** 0.5
    b = torch.randn(cout, dtype=dtype) if bias else None
    return x, wt, b


def _check(backend, x, w, b, mask_type, groups, dilation, dtype):
    """Forward and all three gradients of `backend` against the reference on the same leaves."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    refs = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = masked_conv2d(*leaves, mask_type, groups, dilation, backend=backend)
    yr = masked_conv2d(*refs, mask_type, groups, dilation, backend="reference")
    assert_close(y, yr, name="y", dtype=dtype)
    g = torch.randn_like(yr)
    y.backward(g)
    yr.backward(g)
    for name, a, e in zip(("grad x", "grad weight", "grad bias"), leaves, refs):
        if a is not None:
            assert_close(a.grad, e.grad, name=name, dtype=dtype, scale=4)


# (N, Cin, Cout, H, W, kernel, dilation, colour groups)
CONFIGS = [
    (1, 1, 1, 1, 1, 1, 1, 1),
    (2, 3, 6, 5, 5, 3, 1, 3),
    (1, 7, 17, 13, 5, 5, 1, 1),
    (2, 12, 6, 5, 13, 7, 1, 3),
    (1, 6, 3, 2, 1, 3, 2, 3),
    (3, 17, 7, 13, 13, (1, 3), 3, 1),
    (2, 3, 12, 5, 2, (3, 1), 2, 3),
    (1, 9, 9, 13, 5, (5, 3), 2, 3),
    (2, 3, 3, 1, 13, (1, 5), 1, 3),
    (1, 4, 8, 13, 13, 7, 3, 1),
]


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("n,cin,cout,h,w,k,dilation,groups", CONFIGS)
def test_matches_reference(backend, dtype, mask_type, n, cin, cout, h, w, k, dilation, groups):
    x, wt, b = _inputs(n, cin, cout, h, w, k, dtype, bias=bool((cin + cout) % 2))
    _check(backend, x, wt, b, mask_type, groups, dilation, dtype)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pixelcnn_layer_sizes(backend, dtype):
    # the shapes of a real model: 7x7 'A' input layer on RGB, then 3x3 'B' with many channels (fewer under
    # the Triton interpreter, where 48 channels forward and backward take minutes)
    c = 12 if backend == "triton" else 48
    x, w, b = _inputs(2, 3, c, 11, 9, 7, dtype)
    _check(backend, x, w, b, "A", 3, 1, dtype)
    x, w, b = _inputs(2, c, c, 11, 9, 3, dtype)
    _check(backend, x, w, b, "B", 3, 1, dtype)


@pytest.mark.parametrize("backend", KERNELS)
def test_noncontiguous(backend):
    x, w, b = _inputs(2, 6, 9, 7, 5, 3, torch.float64)
    _check(backend, noncontiguous(x, dim=3), noncontiguous(w, dim=0), noncontiguous(b), "B", 3, 1, torch.float64)
    _check(backend, noncontiguous(x, dim=1), noncontiguous(w, dim=3)[..., :3], b, "A", 3, 2, torch.float64)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    _check(backend, channels_last, w.transpose(2, 3), b, "A", 1, 1, torch.float64)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), cpg_in=st.integers(1, 5), cpg_out=st.integers(1, 5), groups=st.sampled_from([1, 3]),
       h=st.integers(1, 9), w=st.integers(1, 9), kh=st.sampled_from([1, 3, 5, 7]), kw=st.sampled_from([1, 3, 5]),
       dilation=st.integers(1, 3), mask_type=st.sampled_from(["A", "B"]), bias=st.booleans())
def test_property_cpu(n, cpg_in, cpg_out, groups, h, w, kh, kw, dilation, mask_type, bias):
    if not _cpu_available():
        pytest.skip("cpu backend unavailable")
    x, wt, b = _inputs(n, cpg_in * groups, cpg_out * groups, h, w, (kh, kw), torch.float64, bias=bias)
    _check("cpu", x, wt, b, mask_type, groups, dilation, torch.float64)


def _visible(i, j, go, h, w, groups, cin, mask_type, kh, kw, dilation):
    """Bool (Cin, H, W): which inputs output pixel (i, j) of colour group `go` may depend on."""
    vis = torch.zeros(cin, h, w, dtype=torch.bool)
    mask = pixelcnn_mask(groups, cin, (kh, kw), mask_type, groups)  # one output channel per group
    for a in range(kh):
        for c in range(kw):
            ii, jj = i + (a - kh // 2) * dilation, j + (c - kw // 2) * dilation
            if 0 <= ii < h and 0 <= jj < w:
                vis[:, ii, jj] |= mask[go, :, a, c]
    return vis


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("mask_type,groups,k,dilation", [("A", 1, 3, 1), ("B", 1, 5, 2), ("A", 3, 7, 1),
                                                         ("B", 3, 3, 2), ("A", 3, (3, 5), 3)])
def test_causality_is_exact(backend, mask_type, groups, k, dilation):
    # grad of output (i, j, group go) w.r.t. any input it must not see is exactly 0: later pixels in raster
    # order, the same pixel's later colour groups (and its own group for 'A'), and dilation holes.
    h, w, cin, cout = 6, 7, 3 * 2, 3 * 2
    kh, kw = (k, k) if isinstance(k, int) else k
    x, wt, b = _inputs(1, cin, cout, h, w, (kh, kw), torch.float64)
    wt = wt.abs() + 0.5  # no weight is accidentally zero
    x.requires_grad_()
    y = masked_conv2d(x, wt, b, mask_type, groups, dilation, backend=backend)
    cout_g = cout // groups
    for i, j in [(0, 0), (2, 3), (5, 6), (3, 0)]:
        for go in range(groups):
            (g,) = torch.autograd.grad(y[0, go * cout_g, i, j], x, retain_graph=True)
            vis = _visible(i, j, go, h, w, groups, cin, mask_type, kh, kw, dilation)
            assert torch.all(g[0][~vis] == 0), f"output ({i}, {j}) group {go} sees an input it must not see"
            assert torch.all(g[0][vis] != 0), f"output ({i}, {j}) group {go} misses an input it should see"
            later = torch.zeros(cin, h, w, dtype=torch.bool)
            later.view(cin, -1)[:, i * w + j + 1:] = True
            assert not (vis & later).any()  # the visibility rule itself is causal


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("mask_type,groups", [("A", 1), ("B", 3), ("A", 3)])
def test_masked_weights_get_exactly_zero_gradient(backend, mask_type, groups):
    x, w, b = _inputs(2, 6, 9, 5, 6, 5, torch.float64)
    w.requires_grad_()
    masked_conv2d(x, w, b, mask_type, groups, 1, backend=backend).pow(2).sum().backward()
    mask = pixelcnn_mask(9, 6, 5, mask_type, groups)
    assert torch.all(w.grad[~mask] == 0)
    assert torch.all(w.grad[mask] != 0)


def test_pixelcnn_mask():
    m = pixelcnn_mask(1, 1, 3, "A")
    assert m.dtype == torch.bool and m.shape == (1, 1, 3, 3)
    assert m[0, 0].tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    assert pixelcnn_mask(1, 1, (1, 3), "B")[0, 0].tolist() == [[True, True, False]]
    centre = pixelcnn_mask(6, 3, 3, "B", 3)[:, :, 1, 1]  # out groups of 2 channels, in groups of 1
    assert centre.tolist() == [[True, False, False]] * 2 + [[True, True, False]] * 2 + [[True, True, True]] * 2
    assert pixelcnn_mask(3, 3, 1, "A", 3, dtype=torch.float32)[:, :, 0, 0].sum().item() == 3.0
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        pixelcnn_mask(2, 2, (2, 3), "A")
    with pytest.raises(ValueError, match="mask_type"):
        pixelcnn_mask(2, 2, 3, "C")
    with pytest.raises(ValueError, match="color_groups"):
        pixelcnn_mask(4, 3, 3, "B", 2)


def test_opcheck():
    if not _cpu_available():
        pytest.skip("cpu backend unavailable")
    x, w, b = _inputs(2, 6, 3, 5, 4, 3, torch.float64)
    torch.library.opcheck(torch.ops.arkern.masked_conv2d.default,
                          (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), "B", 3, 2))
    g = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.arkern.masked_conv2d_backward.default,
                          (g, x.detach(), w.detach(), "A", 3, 1, [True, True, True]))
    torch.library.opcheck(torch.ops.arkern.masked_conv2d_backward.default,
                          (g, x.detach(), w.detach(), "B", 1, 2, [True, False, False]))


def test_compile_fullgraph():
    net = torch.nn.Sequential(MaskedConv2d(3, 12, 7, "A", color_groups=3), torch.nn.ReLU(),
                              MaskedConv2d(12, 12, 3, "B", color_groups=3, dilation=2), torch.nn.ReLU(),
                              MaskedConv2d(12, 6, 1, "B", color_groups=3))
    x = torch.randn(2, 3, 9, 8)
    compiled = torch.compile(net, fullgraph=True)
    assert_close(compiled(x), net(x), name="compiled")


def test_nn_layer_is_drop_in_for_conv2d():
    conv = torch.nn.Conv2d(6, 9, 5, padding=2).double()
    layer = MaskedConv2d(6, 9, 5, "B", color_groups=3).double()
    layer.load_state_dict(conv.state_dict())  # same keys: nn.Conv2d checkpoints load
    assert set(layer.state_dict()) == set(conv.state_dict())
    x = torch.randn(2, 6, 7, 8, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(x, conv.weight * layer.mask(), conv.bias, padding=2)
    assert_close(layer(x), expected, name="layer")
    assert layer.backend is None
    layer.backend = "reference"
    assert_close(layer(x), expected, name="layer on reference")
    same = MaskedConv2d(4, 4, (3, 5), "A", padding=(2, 4), dilation=2, bias=False)
    assert same.padding == (2, 4) and same.bias is None


@pytest.mark.parametrize("mask_type,groups,k", [("A", 1, (1, 5)), ("B", 1, (1, 5)), ("B", 3, 3), ("A", 3, 1)])
def test_nn_layer_dense_training_path(mask_type, groups, k):
    """`dense` (one F.conv2d with the masked weight): same output and gradients as the op on finite input,
    exactly zero gradient on masked weights, and it runs under bf16 autocast (the MNIST training path)."""
    layer = MaskedConv2d(6, 9, k, mask_type, color_groups=groups).double()
    x = noncontiguous(torch.randn(2, 6, 7, 8, dtype=torch.float64))
    grads = []
    for dense in (False, True):
        layer.dense = dense
        xg = x.detach().requires_grad_()
        y = layer(xg)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape))
        grads.append((y.detach(), xg.grad, layer.weight.grad, layer.bias.grad))
        layer.zero_grad(set_to_none=True)
    for name, got, want in zip(("y", "grad x", "grad weight", "grad bias"), grads[1], grads[0], strict=True):
        assert_close(got, want, name=f"dense {name}")
    assert not grads[1][2][~layer.mask()].any()
    layer = layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.float().bfloat16())
    layer.dense = False
    assert_close(y.float(), layer(x.float()), name="dense under bf16 autocast", dtype=torch.bfloat16, scale=4.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(stride=2), "stride=1"),
    (dict(groups=2), "groups=1"),
    (dict(kernel_size=4), "kernel_size must be odd"),
    (dict(kernel_size=(3, 2)), "kernel_size must be odd"),
    (dict(padding=0), "'same' padding"),
    (dict(padding="valid"), "padding"),
    (dict(padding_mode="reflect"), "padding_mode"),
    (dict(mask_type="C"), "mask_type"),
    (dict(color_groups=4), "color_groups"),
    (dict(dilation=(1, 2)), "dilation"),
])
def test_nn_layer_rejects_unsupported_arguments(kwargs, match):
    args = dict(in_channels=6, out_channels=6, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=match):
        MaskedConv2d(**args)


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, w, b: masked_conv2d(x[0], w, b, "B"), ValueError, "x must have 4 dimensions"),
    (lambda x, w, b: masked_conv2d(x, w[0], b, "B"), ValueError, "weight must have 4 dimensions"),
    (lambda x, w, b: masked_conv2d(x, w, b[None], "B"), ValueError, "bias must have 1 dimensions"),
    (lambda x, w, b: masked_conv2d(x[:, :5], w, b, "B"), ValueError, "x has 5 channels"),
    (lambda x, w, b: masked_conv2d(x, w, b[:2], "B"), ValueError, "bias must have shape"),
    (lambda x, w, b: masked_conv2d(x, w[..., :2], b, "B"), ValueError, "kernel size .* must be odd"),
    (lambda x, w, b: masked_conv2d(x, w[:, :, :2], b, "B"), ValueError, "kernel size .* must be odd"),
    (lambda x, w, b: masked_conv2d(x, w, b, "B", 4), ValueError, "color_groups=4 must divide"),
    (lambda x, w, b: masked_conv2d(x, w, b, "B", 0), ValueError, "color_groups must be >= 1"),
    (lambda x, w, b: masked_conv2d(x, w, b, "B", 1.5), TypeError, "color_groups must be an int"),
    (lambda x, w, b: masked_conv2d(x, w, b, "B", 1, 0), ValueError, "dilation must be >= 1"),
    (lambda x, w, b: masked_conv2d(x, w, b, "B", 1, -2), ValueError, "dilation must be >= 1"),
    (lambda x, w, b: masked_conv2d(x, w, b, "C"), ValueError, "mask_type must be one of"),
    (lambda x, w, b: masked_conv2d(x, w, b, "a"), ValueError, "mask_type must be one of"),
    (lambda x, w, b: masked_conv2d(x.half(), w.half(), b.half(), "B", backend="cpu"), TypeError,
     "x has dtype float16, which backend 'cpu' does not support"),
    (lambda x, w, b: masked_conv2d(x.int(), w, b, "B"), TypeError, "x must have dtype"),
    (lambda x, w, b: masked_conv2d(x, w.float(), b, "B"), TypeError, "weight has dtype float32"),
    (lambda x, w, b: masked_conv2d(x, w, b.float(), "B"), TypeError, "bias has dtype float32"),
    (lambda x, w, b: masked_conv2d(x, w.to("meta"), b, "B"), ValueError, "weight is on meta"),
    (lambda x, w, b: masked_conv2d(x, w, b.to("meta"), "B"), ValueError, "bias is on meta"),
    (lambda x, w, b: masked_conv2d(x, w, b, "B", backend="nope"), ValueError, "backend must be one of"),
])
def test_bad_input(call, exc, match):
    x, w, b = _inputs(2, 6, 3, 5, 4, 3, torch.float64)
    with pytest.raises(exc, match=match):
        call(x, w, b)


@pytest.mark.parametrize("mask_type,groups,dilation", [("A", 1, 1), ("B", 3, 2)])
def test_cuda_backward_formula_matches_cpu_backward(mask_type, groups, dilation):
    # the CUDA backward (dense convolutions with the masked weight) is device-agnostic: check it here
    from arkern.ops.masked_conv2d import backward_by_masked_weight

    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    w = torch.randn(9, 6, 5, 3, dtype=torch.float64)
    g = torch.randn(2, 9, 7, 5, dtype=torch.float64)
    got = backward_by_masked_weight(g, x, w, mask_type, groups, dilation, [True, True, True])
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, torch.zeros(9, dtype=torch.float64)))
    expected = torch.autograd.grad((masked_conv2d(xr, wr, br, mask_type, groups, dilation, backend="reference") * g)
                                   .sum(), (xr, wr, br))
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_future_pixel_stays_in_the_future(backend, mask_type, bad):
    # a masked tap must be skipped, not multiplied by zero (0 * NaN = NaN): pixel (i, j) of colour group g
    # makes non-finite only outputs that may see it -- later pixels, and at (i, j) the later groups
    x, w, b = _inputs(1, 6, 6, 5, 5, 3, torch.float64)
    i, j, c = 2, 3, 2  # colour group 1 of 3
    x[0, c, i, j] = bad
    y = masked_conv2d(x, w, b, mask_type, 3, backend=backend)
    finite = torch.isfinite(y[0])
    later = torch.zeros(5, 5, dtype=torch.bool)
    later.view(-1)[i * 5 + j + 1:] = True
    assert finite[:, ~later & ~(torch.arange(25).view(5, 5) == i * 5 + j)].all()
    first_seen = 2 if mask_type == "A" else 1  # first output group that sees input group 1 at the centre
    assert finite[: 2 * first_seen, i, j].all()


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("dilation", [3, 10_000, 2**31, 2**62])
def test_taps_outside_the_image_cost_nothing(backend, dilation):
    # a 3x3 image with a huge dilation: only the centre tap reaches inside; no memory, padding or 32-bit
    # limit grows with the dilation, and the cropped-away taps get exactly zero gradient
    x, w, b = (t.requires_grad_() for t in _inputs(2, 3, 6, 3, 3, 5, torch.float64))
    y = masked_conv2d(x, w, b, "B", 3, dilation, backend=backend)
    xe, we, be = (t.detach().clone().requires_grad_() for t in (x, w, b))
    ye = masked_conv2d(xe, we[:, :, 2:3, 2:3], be, "B", 3, 1, backend="reference")
    assert_close(y, ye, name="y", dtype=torch.float64)
    g = torch.randn_like(y)
    y.backward(g)
    ye.backward(g)
    for name, a, e in (("grad x", x, xe), ("grad weight", w, we), ("grad bias", b, be)):
        assert_close(a.grad, e.grad, name=name, dtype=torch.float64)
    outside = torch.ones(5, 5, dtype=torch.bool)
    outside[2, 2] = False
    assert torch.equal(w.grad[:, :, outside], torch.zeros_like(w.grad[:, :, outside]))


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("hw", [(0, 5), (5, 0)])
def test_empty_image(backend, hw):
    # an image with no rows or no columns gives an empty output on every backend (the reference included)
    x, w, b = _inputs(2, 3, 6, *hw, 3, torch.float64)
    assert masked_conv2d(x, w, b, "B", 3, backend=backend).shape == (2, 6, *hw)
