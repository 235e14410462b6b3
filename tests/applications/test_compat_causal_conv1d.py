"""arkern.compat.causal_conv1d against a plain F.conv1d model of the causal-conv1d package's semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arkern.compat.causal_conv1d import causal_conv1d_fn, causal_conv1d_update

TOL = {torch.float32: (3e-4, 1e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (1e-2, 5e-2)}


def ref_fn(x, weight, bias=None, initial_states=None, activation=None):
    """float64 model: left-pad with the initial states (or zeros), depthwise conv, optional silu."""
    dim, width = weight.shape
    x64 = x.double()
    pad = (initial_states.double() if initial_states is not None
           else x64.new_zeros(x.shape[0], dim, width - 1))
    full = torch.cat([pad, x64], dim=-1)
    y = F.conv1d(full, weight.double().unsqueeze(1), None if bias is None else bias.double(), groups=dim)
    y = F.silu(y) if activation in ("silu", "swish") else y
    return y, full[..., full.shape[-1] - (width - 1):]


def ref_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None):
    """The package's documented update semantics, in float64, state updated in place."""
    squeeze = x.dim() == 2
    x = x.unsqueeze(-1) if squeeze else x
    dim, width = weight.shape
    seqlen, state_len = x.shape[-1], conv_state.shape[-1]
    if cache_seqlens is None:
        x_new = torch.cat([conv_state.double(), x.double()], dim=-1)
        conv_state.copy_(x_new[..., -state_len:])
    else:
        lag = torch.arange(-(width - 1), 0).unsqueeze(0) + cache_seqlens.long().unsqueeze(1)
        lag = lag.remainder(state_len).unsqueeze(1).expand(-1, dim, -1)
        x_new = torch.cat([conv_state.double().gather(2, lag), x.double()], dim=-1)
        put = torch.arange(seqlen).unsqueeze(0) + cache_seqlens.long().unsqueeze(1)
        put = put.remainder(state_len).unsqueeze(1).expand(-1, dim, -1)
        conv_state.scatter_(2, put, x.to(conv_state.dtype))
    y = F.conv1d(x_new, weight.double().unsqueeze(1), None if bias is None else bias.double(), groups=dim)
    y = y[..., -seqlen:]
    y = F.silu(y) if activation in ("silu", "swish") else y
    return y.squeeze(-1) if squeeze else y


def close(actual, expected, dtype):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def channel_last(batch, dim, seqlen, dtype):
    """(batch, dim, seqlen) with channel-last strides, sliced from a bigger buffer."""
    big = torch.randn(batch, seqlen + 3, dim + 5).to(dtype)
    return big[:, 2:2 + seqlen, 1:1 + dim].transpose(1, 2)


@pytest.mark.parametrize("width", range(1, 9))
@pytest.mark.parametrize("seqlen", [1, 2, 129, 151])
def test_fn_widths_and_seqlens(width, seqlen):
    x = torch.randn(2, 5, seqlen)
    w, b = torch.randn(5, width), torch.randn(5)
    close(causal_conv1d_fn(x, w, b, activation="silu"), ref_fn(x, w, b, activation="silu")[0], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["channel_first", "channel_last"])
def test_fn_dtypes_layouts_states(dtype, layout):
    batch, dim, seqlen, width = 3, 12, 1134, 4
    x = (torch.randn(batch, dim, seqlen).to(dtype) if layout == "channel_first"
         else channel_last(batch, dim, seqlen, dtype))
    w, b = torch.randn(dim, width), torch.randn(dim)
    init = torch.randn(batch, dim, width - 1).to(dtype)
    out = torch.empty(batch, dim, width - 1, dtype=dtype)
    y, final = causal_conv1d_fn(x, w, b, initial_states=init, return_final_states=True, final_states_out=out,
                                activation="swish")
    y_ref, final_ref = ref_fn(x, w, b, init, "silu")
    assert y.dtype == dtype and final is out
    close(y, y_ref, dtype)
    torch.testing.assert_close(final.double(), final_ref, rtol=0, atol=0)  # the last inputs, copied


def test_fn_gradients_include_initial_states():
    x = torch.randn(2, 6, 37, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    init = torch.randn(2, 6, 2, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 6, 37, dtype=torch.float64)
    grads = torch.autograd.grad((causal_conv1d_fn(x, w, b, initial_states=init, activation="silu") * gy).sum(),
                                (x, w, b, init))
    expected = torch.autograd.grad((ref_fn(x, w, b, init, "silu")[0] * gy).sum(), (x, w, b, init))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_fn_sees_no_future():
    x = torch.randn(1, 4, 50, requires_grad=True)
    causal_conv1d_fn(x, torch.randn(4, 5))[0, :, 20].sum().backward()
    assert torch.all(x.grad[..., 21:] == 0) and torch.any(x.grad[..., 16:21] != 0)


def test_fn_varlen_never_crosses_a_boundary():
    dim, width = 7, 4
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, -1, -1], [0] * 6 + [1] * 5], dtype=torch.int32)
    x = torch.randn(2, dim, 11, requires_grad=True)
    w, b = torch.randn(dim, width), torch.randn(dim)
    y = causal_conv1d_fn(x, w, b, seq_idx=seq_idx, activation="silu")
    expected = torch.zeros(2, dim, 11, dtype=torch.float64)
    for row in range(2):
        ids = seq_idx[row]
        for s in ids.unique().tolist():
            if s < 0:
                continue
            cols = torch.nonzero(ids == s).flatten()
            expected[row, :, cols] = ref_fn(x[row:row + 1, :, cols].detach(), w, b, activation="silu")[0][0]
    close(y, expected, torch.float32)
    assert torch.all(y[0, :, 9:] == 0)  # padding positions
    y[0, :, 5].sum().backward()  # first position of sequence 2 sees only itself
    assert torch.all(x.grad[0, :, :5] == 0) and torch.all(x.grad[1] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [2, 4, 7])
def test_update_shift_register_equals_full_sequence(width, dtype):
    batch, dim, seqlen = 2, 6, 9
    x = torch.randn(batch, dim, seqlen).to(dtype)
    w, b = torch.randn(dim, width), torch.randn(dim)
    state = torch.zeros(batch, dim, width + 1, dtype=dtype)  # longer than width - 1 is allowed
    steps = [causal_conv1d_update(x[..., t], state, w, b, activation="silu") for t in range(seqlen)]
    close(torch.stack(steps, -1), ref_fn(x, w, b, activation="silu")[0], dtype)
    torch.testing.assert_close(state[..., -(width - 1):].double(), x[..., -(width - 1):].double(), rtol=0, atol=0)


def test_update_ring_buffer_and_padding_rows():
    pool, dim, width, state_len = 5, 8, 4, 6
    w, b = torch.randn(dim, width), torch.randn(dim)
    state = torch.randn(pool, dim, state_len)
    indices = torch.tensor([3, -1, 0], dtype=torch.int32)
    cache_seqlens = torch.tensor([4, 2, 11], dtype=torch.int32)
    x = torch.randn(3, dim, 2)
    expected_state = state.clone()
    live = indices >= 0
    rows = indices[live].long()
    sub = expected_state[rows]
    expected = torch.zeros(3, dim, 2, dtype=torch.float64)
    expected[live] = ref_update(x[live], sub, w, b, "silu", cache_seqlens[live])
    expected_state[rows] = sub
    y = causal_conv1d_update(x, state, w, b, "silu", cache_seqlens=cache_seqlens, conv_state_indices=indices)
    close(y, expected, torch.float32)
    assert torch.all(y[1] == 0)
    torch.testing.assert_close(state, expected_state, rtol=0, atol=0)  # pool rows 1, 2, 4 untouched


def test_results_are_deterministic():
    x, w = channel_last(2, 16, 300, torch.float32), torch.randn(16, 4)
    assert torch.equal(causal_conv1d_fn(x, w, activation="silu"), causal_conv1d_fn(x, w, activation="silu"))


@pytest.mark.parametrize("call,match", [
    (lambda: causal_conv1d_fn(torch.randn(1, 4, 5), torch.randn(4, 3), activation="gelu"), "activation"),
    (lambda: causal_conv1d_fn(torch.randn(1, 4, 5), torch.randn(3, 3)), "weight must have shape"),
    (lambda: causal_conv1d_fn(torch.randn(1, 4, 5), torch.randn(4, 3), seq_idx=torch.zeros(1, 5)), "seq_idx"),
    (lambda: causal_conv1d_fn(torch.randn(1, 4, 5), torch.randn(4, 3), seq_idx=torch.zeros(1, 5, dtype=torch.int32),
                              initial_states=torch.zeros(1, 4, 2)), "initial_states"),
    (lambda: causal_conv1d_update(torch.randn(4), torch.zeros(1, 4, 2), torch.randn(4, 3)), "x must be"),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
