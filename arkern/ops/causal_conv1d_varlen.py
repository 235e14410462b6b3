"""causal_conv1d_varlen_states: the conv states of every sequence of a packed variable-length batch.

Registered as ``torch.ops.arkern.causal_conv1d_varlen_states`` (autograd for x: each kept token receives the
gradient of its state slot). Semantics and layout: :mod:`arkern.reference.causal_conv1d_varlen`. The public
face :func:`causal_conv1d_varlen_states` validates, chooses a backend and runs it.
"""

from __future__ import annotations

import torch

from arkern.backends import OpBackends
from arkern.ops._library import LIB
from arkern.ops._validate import FLOAT_DTYPES, MAX_STATE_BYTES, check_int, check_tensor
from arkern.reference import causal_conv1d_varlen as ref

OP = "causal_conv1d_varlen_states"
INDEX_DTYPES = (torch.int32, torch.int64)

LIB.define("causal_conv1d_varlen_states(Tensor x, Tensor cu_seqlens, int state_len) -> Tensor")


@torch.library.register_fake("arkern::causal_conv1d_varlen_states")
def _fake(x, cu_seqlens, state_len):
    batch, dim = cu_seqlens.shape[0] - 1, x.shape[1]
    return x.new_empty_strided((batch, dim, state_len), (state_len * dim, 1, dim))


def _setup_context(ctx, inputs, output):
    x, cu_seqlens, _ = inputs
    ctx.save_for_backward(cu_seqlens)
    ctx.total_tokens = x.shape[0]


def _backward(ctx, grad_states):
    (cu_seqlens,) = ctx.saved_tensors
    return ref.causal_conv1d_varlen_states_backward(grad_states, cu_seqlens, ctx.total_tokens), None, None


torch.library.register_autograd("arkern::causal_conv1d_varlen_states", _backward, setup_context=_setup_context)


def _cpu(x, cu_seqlens, state_len):
    return torch.ops.arkern.causal_conv1d_varlen_states(x, cu_seqlens, state_len)


def _triton(x, cu_seqlens, state_len):
    from arkern.triton.causal_conv1d_varlen import causal_conv1d_varlen_states as kernel  # lazy Triton import

    return kernel(x, cu_seqlens, state_len)


BACKENDS = OpBackends(OP)
BACKENDS.register("reference", ref.causal_conv1d_varlen_states, FLOAT_DTYPES)
BACKENDS.register("cpu", _cpu, FLOAT_DTYPES, torch_op="arkern::causal_conv1d_varlen_states")
BACKENDS.register("triton", _triton, FLOAT_DTYPES)


def validate(x: torch.Tensor, cu_seqlens: torch.Tensor, state_len: int) -> None:
    """Check a causal_conv1d_varlen_states call (raises ValueError/TypeError naming the argument)."""
    check_tensor(OP, "x", x, ndim=2)
    check_tensor(OP, "cu_seqlens", cu_seqlens, ndim=1, dtypes=INDEX_DTYPES)
    check_int(OP, "state_len", state_len, minimum=1)
    if cu_seqlens.device != x.device:
        raise ValueError(f"{OP}: cu_seqlens is on {cu_seqlens.device} but x is on {x.device}")
    if cu_seqlens.numel() < 1:
        raise ValueError(f"{OP}: cu_seqlens must have batch + 1 >= 1 entries (the cumulative sequence lengths "
                         f"starting with 0), got an empty tensor")
    states = (cu_seqlens.numel() - 1) * x.shape[1] * state_len * x.element_size()
    if states >= MAX_STATE_BYTES:
        raise ValueError(f"{OP}: state_len={state_len} asks for {states / 2**40:.3g} TiB of states "
                         f"({cu_seqlens.numel() - 1} sequences x {x.shape[1]} channels), too large to return")
    if torch.compiler.is_compiling():  # value checks need the data (the C++ kernel re-checks them)
        return
    cu = cu_seqlens.to("cpu", torch.int64)
    total = x.shape[0]
    if int(cu[0]) < 0:
        raise ValueError(f"{OP}: cu_seqlens must start at a token index >= 0 (normally 0), got {int(cu[0])}")
    steps = cu[1:] - cu[:-1]
    if steps.numel() and int(steps.min()) < 0:
        i = int(torch.nonzero(steps < 0)[0, 0])
        raise ValueError(f"{OP}: cu_seqlens must be non-decreasing (it is the cumulative sum of the sequence "
                         f"lengths), but cu_seqlens[{i + 1}] = {int(cu[i + 1])} < cu_seqlens[{i}] = {int(cu[i])}")
    if int(cu[-1]) != total:
        raise ValueError(f"{OP}: cu_seqlens must end at the number of tokens in x (x.shape[0] = {total}), "
                         f"got last value {int(cu[-1])}")


def causal_conv1d_varlen_states(x: torch.Tensor, cu_seqlens: torch.Tensor, state_len: int, *,
                                backend: str | None = None) -> torch.Tensor:
    """The last `state_len` tokens of every sequence of a packed batch (zero-padded on the left), i.e. the
    decode states that continue each sequence with :func:`arkern.ops.causal_conv1d_update`.

    Args:
        x: (total_tokens, dim), the sequences back to back; any strides (e.g. a column slice of a wider
            projection).
        cu_seqlens: (batch + 1,) int32 or int64 cumulative sequence lengths: sequence i is
            ``x[cu_seqlens[i]:cu_seqlens[i + 1]]``; non-decreasing (empty sequences allowed), last value
            total_tokens.
        state_len: tokens kept per sequence (>= 1); a sequence shorter than that is zero-padded on the left.
        backend: "reference", "cpu", "triton" or None for the fastest available.

    Returns:
        states (batch, dim, state_len) in x's dtype, a transposed view of contiguous (batch, state_len, dim)
        memory (channel-last, as causal-conv1d returns it).
    """
    validate(x, cu_seqlens, state_len)
    kernel = BACKENDS.select(backend, x.device, x.dtype)
    return kernel.fn(x, cu_seqlens, state_len)
