"""masked_linear: the MADE layer y = x @ (weight * mask)^T + bias, with kernels that skip masked weights.

Registered as ``torch.ops.arkern.masked_linear`` (+ ``masked_linear_backward``); the public face is
:func:`masked_linear`, which validates, chooses a backend and reshapes leading batch dimensions.
"""

from __future__ import annotations

import torch

from arkern.backends import OpBackends
from arkern.ops._library import LIB, optional_grads
from arkern.ops._validate import check_same, check_shape, check_tensor
from arkern.reference import masked_linear as ref

OP = "masked_linear"

LIB.define("masked_linear(Tensor x, Tensor weight, Tensor? bias, Tensor mask) -> Tensor")
LIB.define("masked_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor mask, "
           "bool[3] output_mask) -> (Tensor, Tensor, Tensor)")


@torch.library.register_fake("arkern::masked_linear")
def _fake(x, weight, bias, mask):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.register_fake("arkern::masked_linear_backward")
def _fake_backward(grad_out, x, weight, mask, output_mask):
    gx = torch.empty_like(x) if output_mask[0] else x.new_empty(0)
    gw = torch.empty_like(weight) if output_mask[1] else weight.new_empty(0)
    gb = weight.new_empty(weight.shape[0]) if output_mask[2] else weight.new_empty(0)
    return gx, gw, gb


def _setup_context(ctx, inputs, output):
    x, weight, bias, mask = inputs
    ctx.save_for_backward(x, weight, mask)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight, mask = ctx.saved_tensors
    needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
    grads = torch.ops.arkern.masked_linear_backward(grad_out.contiguous(), x, weight, mask, list(needs))
    return *optional_grads(grads, needs), None


torch.library.register_autograd("arkern::masked_linear", _backward, setup_context=_setup_context)

BACKENDS = OpBackends(OP)
BACKENDS.register("reference", ref.masked_linear, (torch.float32, torch.float64, torch.bfloat16, torch.float16))
BACKENDS.register("cpu", lambda x, w, b, m: torch.ops.arkern.masked_linear(x, w, b, m),
                  (torch.float32, torch.float64), torch_op="arkern::masked_linear")


def _triton(x, w, b, m):
    from arkern.triton.masked_linear import masked_linear as kernel  # Triton is imported lazily

    return kernel(x, w, b, m)


BACKENDS.register("triton", _triton, (torch.float32, torch.float64))


def validate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> None:
    """Check shapes, dtypes and devices of a masked_linear call (raises ValueError/TypeError)."""
    check_tensor(OP, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{OP}: x must have at least 1 dimension (..., in_features), got a scalar")
    check_tensor(OP, "weight", weight, ndim=2)
    if bias is not None:
        check_tensor(OP, "bias", bias, ndim=1)
    check_same(OP, "x", x, weight=weight, bias=bias)
    check_tensor(OP, "mask", mask, ndim=2, dtypes=(torch.bool,))
    out_f, in_f = weight.shape
    if in_f < 1 or out_f < 1:
        raise ValueError(f"{OP}: weight must have in_features >= 1 and out_features >= 1, got shape "
                         f"{tuple(weight.shape)}")
    if x.shape[-1] != in_f:
        raise ValueError(f"{OP}: x has {x.shape[-1]} features in its last dimension but weight expects "
                         f"{in_f} (weight shape {tuple(weight.shape)})")
    if bias is not None:
        check_shape(OP, "bias", bias, (out_f,), "out_features of weight")
    check_shape(OP, "mask", mask, (out_f, in_f), "the shape of weight")
    if mask.device != x.device:
        raise ValueError(f"{OP}: mask is on {mask.device} but x is on {x.device}")


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                  *, backend: str | None = None) -> torch.Tensor:
    """MADE masked linear map.

    Args:
        x: (..., in_features).
        weight: (out_features, in_features).
        bias: (out_features,) or None.
        mask: (out_features, in_features) bool; see :func:`arkern.masks.made_mask`.
        backend: "reference", "cpu", ... or None for the fastest available.

    Returns:
        (..., out_features). Entries of `weight` where `mask` is False get exactly zero gradient.
    """
    validate(x, weight, bias, mask)
    kernel = BACKENDS.select(backend, x.device, x.dtype)
    if kernel.backend == "reference":
        return kernel.fn(x, weight, bias, mask)
    lead = x.shape[:-1]
    y = kernel.fn(x.reshape(-1, x.shape[-1]), weight, bias, mask)
    return y.reshape(*lead, weight.shape[0])
