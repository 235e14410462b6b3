"""causal_conv1d: causal (optionally dilated, grouped, silu-activated) 1-D convolution and its decode step.

Registered as ``torch.ops.arkern.causal_conv1d`` (+ ``causal_conv1d_backward``, grads for x, weight, bias
and initial_state) and ``torch.ops.arkern.causal_conv1d_update`` (mutates ``conv_state`` in place, no
autograd). Semantics, including exactly how the decode state is read as a shift register or a ring
buffer: :mod:`arkern.reference.causal_conv1d`. The public faces :func:`causal_conv1d` and
:func:`causal_conv1d_update` validate, choose a backend and run it.
"""

from __future__ import annotations

import torch

from arkern.backends import OpBackends
from arkern.ops._library import LIB, optional_grads, same_device
from arkern.ops._validate import (
    MAX_STATE_BYTES,
    check_choice,
    check_int,
    check_same,
    check_shape,
    check_tensor,
    check_writable,
)
from arkern.reference import causal_conv1d as ref

OP = "causal_conv1d"
OP_UPDATE = "causal_conv1d_update"
ACTIVATIONS = (None, "silu")

LIB.define("causal_conv1d(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_state, int dilation, int groups, "
           "bool silu) -> Tensor")
LIB.define("causal_conv1d_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? initial_state, "
           "int dilation, int groups, bool silu, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)")
LIB.define("causal_conv1d_update(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, int dilation, "
           "int groups, bool silu, Tensor? cache_seqlens, Tensor? conv_state_indices) -> Tensor")


@torch.library.register_fake("arkern::causal_conv1d")
def _fake(x, weight, bias, initial_state, dilation, groups, silu):
    same_device(OP, x=x, weight=weight, bias=bias, initial_state=initial_state)
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2]))


@torch.library.register_fake("arkern::causal_conv1d_backward")
def _fake_backward(grad_out, x, weight, bias, initial_state, dilation, groups, silu, output_mask):
    gx = x.new_empty(x.shape) if output_mask[0] else x.new_empty(0)
    gw = weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty(0)
    gb = weight.new_empty(weight.shape[0]) if output_mask[2] else weight.new_empty(0)
    gi = x.new_empty(initial_state.shape) if output_mask[3] and initial_state is not None else x.new_empty(0)
    return gx, gw, gb, gi


@torch.library.register_fake("arkern::causal_conv1d_update")
def _fake_update(x, conv_state, weight, bias, dilation, groups, silu, cache_seqlens, conv_state_indices):
    same_device(OP_UPDATE, x=x, conv_state=conv_state, weight=weight, bias=bias, cache_seqlens=cache_seqlens,
                conv_state_indices=conv_state_indices)
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2]))


def _setup_context(ctx, inputs, output):
    x, weight, bias, initial_state, dilation, groups, silu = inputs
    ctx.save_for_backward(x, weight, bias, initial_state)
    ctx.conf = (dilation, groups, silu)
    ctx.has = (True, True, bias is not None, initial_state is not None)


def _backward(ctx, grad_out):
    x, weight, bias, initial_state = ctx.saved_tensors
    needs = tuple(h and n for h, n in zip(ctx.has, ctx.needs_input_grad[:4]))
    grads = torch.ops.arkern.causal_conv1d_backward(grad_out.contiguous(), x, weight, bias, initial_state,
                                                    *ctx.conf, list(needs))
    return *optional_grads(grads, needs), None, None, None


torch.library.register_autograd("arkern::causal_conv1d", _backward, setup_context=_setup_context)


def final_state(x: torch.Tensor, initial_state: torch.Tensor | None, s0: int) -> torch.Tensor:
    """The last s0 inputs (B, Cin, s0) of [initial_state (or zeros) | x], as a fresh tensor (never a view)."""
    T = x.shape[-1]
    if T >= s0:
        return x[:, :, T - s0:].clone(memory_format=torch.contiguous_format)
    past = initial_state if initial_state is not None else x.new_zeros((x.shape[0], x.shape[1], s0))
    return torch.cat([past[:, :, T:], x], dim=-1)


def _cpu(x, weight, bias, dilation, groups, activation, initial_state, return_final_state):
    y = torch.ops.arkern.causal_conv1d(x, weight, bias, initial_state, dilation, groups, activation == "silu")
    if not return_final_state:
        return y
    return y, final_state(x, initial_state, (weight.shape[-1] - 1) * dilation)


def _cpu_update(x, conv_state, weight, bias, dilation, groups, activation, cache_seqlens, conv_state_indices):
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    y = torch.ops.arkern.causal_conv1d_update(x3, conv_state, weight, bias, dilation, groups, activation == "silu",
                                              cache_seqlens, conv_state_indices)
    return y.squeeze(-1) if x.dim() == 2 else y


def _triton(*args):
    from arkern.triton.causal_conv1d import causal_conv1d as kernel  # Triton is imported lazily

    return kernel(*args)


@torch.library.custom_op("arkern::causal_conv1d_update_triton", mutates_args=("conv_state",))
def _triton_update_op(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      dilation: int, groups: int, silu: bool, cache_seqlens: torch.Tensor | None,
                      conv_state_indices: torch.Tensor | None) -> torch.Tensor:
    # A custom op declaring the write of conv_state, so that torch bumps its version counter and refuses an
    # inference tensor outside inference mode, as for the C++ kernels (the Triton kernel writes raw memory).
    from arkern.triton.causal_conv1d import causal_conv1d_update as kernel  # Triton is imported lazily

    return kernel(x, conv_state, weight, bias, dilation, groups, "silu" if silu else None, cache_seqlens,
                  conv_state_indices)


@_triton_update_op.register_fake
def _fake_triton_update(x, conv_state, weight, bias, dilation, groups, silu, cache_seqlens, conv_state_indices):
    return x.new_empty((x.shape[0], weight.shape[0], *x.shape[2:]))


def _triton_update(x, conv_state, weight, bias, dilation, groups, activation, cache_seqlens, conv_state_indices):
    return _triton_update_op(x, conv_state, weight, bias, dilation, groups, activation == "silu", cache_seqlens,
                             conv_state_indices)


_ALL = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
BACKENDS = OpBackends(OP)
BACKENDS.register("reference", ref.causal_conv1d, _ALL)
BACKENDS.register("cpu", _cpu, (torch.float32, torch.float64), torch_op="arkern::causal_conv1d")
BACKENDS.register("triton", _triton, (torch.float32, torch.float64))
BACKENDS.register("cuda", _cpu, (torch.float32, torch.float64), torch_op="arkern::causal_conv1d")

UPDATE_BACKENDS = OpBackends(OP_UPDATE)
UPDATE_BACKENDS.register("reference", ref.causal_conv1d_update, _ALL)
UPDATE_BACKENDS.register("cpu", _cpu_update, (torch.float32, torch.float64), torch_op="arkern::causal_conv1d_update")
UPDATE_BACKENDS.register("triton", _triton_update, (torch.float32, torch.float64))
UPDATE_BACKENDS.register("cuda", _cpu_update, (torch.float32, torch.float64), torch_op="arkern::causal_conv1d_update")


def _check_conv(op: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int,
                groups: int, activation: str | None) -> int:
    """Checks shared by both ops (x already checked for rank). Returns S0 = (K-1) * dilation."""
    check_tensor(op, "weight", weight, ndim=3)
    if bias is not None:
        check_tensor(op, "bias", bias, ndim=1)
    check_same(op, "x", x, weight=weight, bias=bias)
    check_int(op, "dilation", dilation, minimum=1)
    check_int(op, "groups", groups, minimum=1)
    check_choice(op, "activation", activation, ACTIVATIONS)
    cin = x.shape[1]
    cout, cpg_in, K = weight.shape
    if K < 1:
        raise ValueError(f"{op}: weight must have kernel size K >= 1 in its last dimension, got shape "
                         f"{tuple(weight.shape)}")
    if cin % groups or cout % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels of x ({cin}) and the output "
                         f"channels of weight ({cout})")
    if cpg_in * groups != cin:
        raise ValueError(f"{op}: x has {cin} channels but weight expects {cpg_in * groups} "
                         f"({cpg_in} per group x groups={groups}; weight shape {tuple(weight.shape)})")
    if bias is not None:
        check_shape(op, "bias", bias, (cout,), "out_channels of weight")
    return (K - 1) * dilation


def validate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int, groups: int,
             activation: str | None, initial_state: torch.Tensor | None, return_final_state: bool = False) -> int:
    """Check a causal_conv1d call (raises ValueError/TypeError naming the argument). Returns S0."""
    check_tensor(OP, "x", x, ndim=3)
    s0 = _check_conv(OP, x, weight, bias, dilation, groups, activation)
    if x.shape[2] < 1:
        raise ValueError(f"{OP}: x must have at least one time step, got shape {tuple(x.shape)}")
    if not isinstance(return_final_state, bool):
        raise TypeError(f"{OP}: return_final_state must be a bool, got {type(return_final_state).__name__}")
    if return_final_state and x.shape[0] * x.shape[1] * s0 * x.element_size() >= MAX_STATE_BYTES:
        raise ValueError(f"{OP}: dilation={dilation} with K={weight.shape[-1]} gives a final state of "
                         f"(K-1)*dilation = {s0} steps per channel, too large to return; use "
                         f"return_final_state=False (the output itself costs nothing extra)")
    if initial_state is not None:
        check_tensor(OP, "initial_state", initial_state, ndim=3)
        check_same(OP, "x", x, initial_state=initial_state)
        check_shape(OP, "initial_state", initial_state, (x.shape[0], x.shape[1], s0),
                    "(B, Cin, (K-1)*dilation)")
    return s0


def validate_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    dilation: int, groups: int, activation: str | None, cache_seqlens: torch.Tensor | None,
                    conv_state_indices: torch.Tensor | None) -> None:
    """Check a causal_conv1d_update call (raises ValueError/TypeError naming the argument)."""
    check_tensor(OP_UPDATE, "x", x, ndim=(2, 3))
    s0 = _check_conv(OP_UPDATE, x, weight, bias, dilation, groups, activation)
    check_tensor(OP_UPDATE, "conv_state", conv_state, ndim=3)
    check_same(OP_UPDATE, "x", x, conv_state=conv_state)
    B, cin = x.shape[:2]
    pool, c_state, S = conv_state.shape
    check_writable(OP_UPDATE, "conv_state", conv_state, x=x, weight=weight, bias=bias)
    if c_state != cin or S < s0:
        raise ValueError(f"{OP_UPDATE}: conv_state must have shape (pool, {cin}, S) with S >= (K-1)*dilation = "
                         f"{s0}, got {tuple(conv_state.shape)}")
    for name, t in (("cache_seqlens", cache_seqlens), ("conv_state_indices", conv_state_indices)):
        if t is not None:
            check_tensor(OP_UPDATE, name, t, ndim=1, dtypes=(torch.int32,))
            check_shape(OP_UPDATE, name, t, (B,), "one entry per batch row of x")
            if t.device != x.device:
                raise ValueError(f"{OP_UPDATE}: {name} is on {t.device} but x is on {x.device}")
    if conv_state_indices is None:
        if pool != B:
            raise ValueError(f"{OP_UPDATE}: conv_state has {pool} rows but x has batch {B}; pass "
                             f"conv_state_indices to use rows of a larger state pool")
    elif not torch.compiler.is_compiling():  # value checks need the data (the C++ kernel re-checks the range)
        live = conv_state_indices[conv_state_indices >= 0]
        if live.numel() and int(live.max()) >= pool:
            raise ValueError(f"{OP_UPDATE}: conv_state_indices must be < {pool} (rows of conv_state), got "
                             f"{int(live.max())}")
        if live.unique().numel() != live.numel():
            raise ValueError(f"{OP_UPDATE}: conv_state_indices must not repeat a state row (two rows would "
                             f"update the same state)")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, dilation: int = 1,
                  groups: int = 1, activation: str | None = None, initial_state: torch.Tensor | None = None,
                  return_final_state: bool = False, *,
                  backend: str | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal 1-D convolution: y[:, :, t] depends only on inputs at times <= t.

    Args:
        x: (B, Cin, T), any strides (channel-last included).
        weight: (Cout, Cin // groups, K), any K >= 1. ``groups == Cin == Cout`` is the depthwise case.
        bias: (Cout,) or None.
        dilation: spacing of the taps (>= 1); the receptive field is S0 + 1 with S0 = (K-1) * dilation.
        groups: channel groups (divides Cin and Cout).
        activation: None or "silu".
        initial_state: (B, Cin, S0) inputs before time 0 (e.g. a previous chunk's final state), or None for zeros.
        return_final_state: also return the last S0 inputs (B, Cin, S0), to continue with another chunk or
            with :func:`causal_conv1d_update` (shift-register state).
        backend: "reference", "cpu", "triton" or None for the fastest available.

    Returns:
        y (B, Cout, T), or (y, final_state) when return_final_state.
    """
    s0 = validate(x, weight, bias, dilation, groups, activation, initial_state, return_final_state)
    kernel = BACKENDS.select(backend, x.device, x.dtype)
    w, d = (weight, dilation) if initial_state is not None else taps_inside(weight, dilation, x.shape[-1])
    y = kernel.fn(x, w, bias, d, groups, activation, initial_state, False)
    return (y, final_state(x, initial_state, s0)) if return_final_state else y


def taps_inside(weight: torch.Tensor, dilation: int, T: int) -> tuple[torch.Tensor, int]:
    """Drop the taps that read only the zeros before time 0 (lag (K-1-k)*dilation >= T, no initial state).

    They add exactly zero to every output and their weight gradient is zero, which slicing the weight keeps
    (autograd fills the dropped taps' gradient with zeros). The work and memory of a call then depend on T,
    not on the dilation: with dilation >= T only the last tap (the current input) remains.

    Returns (weight[..., k0:], dilation), the dilation 1 when one tap is left.
    """
    K = weight.shape[-1]
    k0 = max(0, K - 1 - (T - 1) // dilation)  # first tap with lag <= T - 1
    if k0 == 0:
        return weight, dilation
    return weight[..., k0:], dilation if K - k0 > 1 else 1


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, dilation: int = 1, groups: int = 1,
                         activation: str | None = None, cache_seqlens: torch.Tensor | None = None,
                         conv_state_indices: torch.Tensor | None = None, *,
                         backend: str | None = None) -> torch.Tensor:
    """Decode step(s) of :func:`causal_conv1d`, updating ``conv_state`` in place.

    Args:
        x: (B, Cin) one token per row, or (B, Cin, t) t tokens in time order.
        conv_state: (pool, Cin, S) with S >= (K-1)*dilation: past inputs, a shift register (newest last)
            without cache_seqlens, a ring buffer (input at time tau in slot tau mod S) with it.
        weight, bias, dilation, groups, activation: as :func:`causal_conv1d`.
        cache_seqlens: (B,) int32 tokens already seen per row (ring-buffer mode), or None.
        conv_state_indices: (B,) int32 state row of each batch row (pool rows otherwise untouched);
            negative = padding row: output zero, no state touched. None: row b uses state row b.
        backend: "reference", "cpu", "triton" or None.

    Returns:
        (B, Cout) for 2-D x, else (B, Cout, t): what causal_conv1d gives at those times of the full history.
    """
    validate_update(x, conv_state, weight, bias, dilation, groups, activation, cache_seqlens, conv_state_indices)
    kernel = UPDATE_BACKENDS.select(backend, x.device, x.dtype)
    return kernel.fn(x, conv_state, weight, bias, dilation, groups, activation, cache_seqlens, conv_state_indices)
