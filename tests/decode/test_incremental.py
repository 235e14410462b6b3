"""The generic incremental (cached) decoding protocol: teacher-forced pixel / row steps equal the full
forward for user-built stacks of arkern.nn layers; colour sub-steps; clear errors for what it cannot do."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import arkern.nn as ann
from arkern.decode.incremental import incremental, run_incremental
from arkern.nn import ConcatELU, DownShift, Gate, Residual, RightShift
from arkern.testing import assert_close, noncontiguous

pytestmark = pytest.mark.usefixtures("one_thread")


def _user_stack(cin: int, hidden: int, groups: int, dtype: torch.dtype, dilation: int = 1) -> nn.Sequential:
    """What a user might write: masked convs, 1x1 convs, activations, a residual gated block."""
    conv = lambda i, o, k, m, d=1: ann.MaskedConv2d(i, o, k, mask_type=m, color_groups=groups, dilation=d,
                                                    dtype=dtype)
    return nn.Sequential(
        conv(cin, hidden, 5, "A"),
        nn.ReLU(),
        Residual(nn.Sequential(conv(hidden, 2 * hidden, 3, "B", dilation), Gate(groups))),
        nn.ELU(),
        conv(hidden, hidden, (1, 3), "B"),
        nn.Tanh(),
        conv(hidden, 2 * groups, 1, "B"),
    ).eval()


def _check_user_stack(n, cin, groups, h, w, dtype, dilation=1):
    model = _user_stack(cin, 6 * groups, groups, dtype, dilation)
    x = torch.randn(n, cin, h, w, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
    assert_close(run_incremental(model, x), expected, name="pixel steps", dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,cin,groups", [(1, 1, 1), (3, 1, 1), (2, 3, 3)])
@pytest.mark.parametrize("h,w", [(5, 7), (8, 8), (1, 4)])
def test_user_sequential_pixel_steps_match_forward(dtype, n, cin, groups, h, w):
    _check_user_stack(n, cin, groups, h, w, dtype)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 3), groups=st.sampled_from([1, 2, 3]), h=st.integers(1, 7), w=st.integers(1, 7),
       dilation=st.integers(1, 3))
def test_user_sequential_property(n, groups, h, w, dilation):
    _check_user_stack(n, groups, groups, h, w, torch.float64, dilation)


def test_noncontiguous_input_and_plain_pointwise_layers():
    model = nn.Sequential(ann.MaskedConv2d(2, 8, 3, mask_type="A", dtype=torch.float64), nn.Conv2d(8, 8, 1,
                          dtype=torch.float64), nn.SiLU(), ConcatELU(),
                          ann.MaskedConv2d(16, 4, 3, mask_type="B", dtype=torch.float64)).eval()
    x = noncontiguous(torch.randn(2, 2, 6, 5, dtype=torch.float64), dim=3)
    with torch.no_grad():
        expected = model(x)
    assert_close(run_incremental(model, x), expected, name="pixel steps")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_colour_sub_steps(dtype):
    # sub-step g at (i, j): image groups >= g unknown (garbage here); output group g must already be exact
    groups, n, h, w = 3, 2, 4, 5
    model = _user_stack(3, 12, groups, dtype)
    x = torch.randn(n, 3, h, w, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
    view = incremental(model)
    view.reset(n, h, w, dtype=dtype)
    got = torch.zeros_like(expected)
    per = expected.shape[1] // groups
    for i in range(h):
        for j in range(w):
            for g in range(groups):
                pixel = x[:, :, i, j].clone()
                pixel[:, g:] = torch.randn_like(pixel[:, g:]) * 100
                got[:, g * per:(g + 1) * per, i, j] = view.step(pixel, i, j)[:, g * per:(g + 1) * per]
            view.write(x[:, :, i, j], i, j)
    assert_close(got, expected, name="sub-step outputs", dtype=dtype)


def _shifted_stack(dtype):
    return nn.Sequential(
        ann.ShiftedConv2d(2, 8, (2, 3), shift="down", dtype=dtype),
        nn.ELU(),
        ann.ShiftedConv2d(8, 8, (3, 3), shift="down", dtype=dtype),
        DownShift(),
        Residual(nn.Sequential(nn.Conv2d(8, 8, 1, dtype=dtype), nn.Tanh())),
        ann.ShiftedConv2d(8, 4, (2, 1), shift="down", dtype=dtype),
    ).eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,h,w", [(1, 5, 7), (3, 8, 8), (2, 1, 3)])
def test_row_steps_match_forward(dtype, n, h, w):
    model = _shifted_stack(dtype)
    x = torch.randn(n, 2, h, w, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
    assert_close(run_incremental(model, x, rows=True), expected, name="row steps", dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_downright_and_shifts_pixel_steps(dtype):
    model = nn.Sequential(
        ann.ShiftedConv2d(3, 6, (2, 2), shift="downright", dtype=dtype),
        RightShift(),
        nn.ReLU(),
        ann.ShiftedConv2d(6, 6, (2, 3), shift="downright", dtype=dtype),
        DownShift(),
        ann.MaskedConv2d(6, 4, 3, mask_type="B", dtype=dtype),
    ).eval()
    x = torch.randn(2, 3, 5, 7, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
    assert_close(run_incremental(model, x), expected, name="pixel steps", dtype=dtype)
    assert_close(run_incremental(model, x, rows=True), expected, name="row steps", dtype=dtype)


def test_cache_contents_equal_the_input():
    layer = ann.MaskedConv2d(2, 3, 3, mask_type="A", dtype=torch.float64)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    view = incremental(layer)
    view.reset(1, 4, 5, dtype=torch.float64)
    for i in range(4):
        for j in range(5):
            view.step(x[:, :, i, j], i, j)
    assert torch.equal(view.cache[:, :, 1:, 1:-1], x)
    assert torch.all(view.cache[:, :, 0] == 0) and torch.all(view.cache[..., 0] == 0)


def test_unsupported_layers_are_clear_errors():
    with pytest.raises(TypeError, match="Conv2d"):
        incremental(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1)))
    with pytest.raises(TypeError, match="GroupNorm"):
        incremental(nn.GroupNorm(1, 4))
    down = incremental(ann.ShiftedConv2d(2, 2, (2, 3), shift="down"))
    down.reset(1, 3, 3, dtype=torch.float32)
    with pytest.raises(TypeError, match="step_row"):
        down.step(torch.zeros(1, 2), 0, 0)
    with pytest.raises(TypeError, match="stride"):
        incremental(ann.ShiftedConv2d(2, 2, (2, 3), shift="down", stride=2))
    view = incremental(ann.MaskedConv2d(2, 2, 3, mask_type="A"))
    view.reset(1, 3, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match="outside"):
        view.step(torch.zeros(1, 2), 3, 0)
    with pytest.raises(ValueError, match="Cin=2"):
        view.step(torch.zeros(1, 5), 0, 0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        run_incremental(nn.ReLU(), torch.zeros(2, 3))


def test_user_layer_can_opt_in_as_pointwise():
    class Scale(nn.Module):
        arkern_pointwise = True

        def forward(self, x):
            return 2 * x + 1

    model = nn.Sequential(ann.MaskedConv2d(1, 4, 3, mask_type="A", dtype=torch.float64), Scale())
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    assert_close(run_incremental(model, x), expected, name="pixel steps")
