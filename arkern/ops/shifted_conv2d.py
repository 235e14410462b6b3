"""shifted_conv2d: PixelCNN++ causal convolutions ('down' / 'downright' shift) and their transposed
(upsampling) variant, with C++ kernels that never build a padded input and only compute taps that land
inside the image.

Registered as ``torch.ops.arkern.shifted_conv2d``, ``shifted_conv_transpose2d`` and their ``*_backward``
ops (gradients for input, weight, bias); the public faces are :func:`shifted_conv2d` and
:func:`shifted_conv_transpose2d`, which validate, choose a backend and run it.
"""

from __future__ import annotations

import torch

from arkern.backends import OpBackends
from arkern.ops._library import LIB, optional_grads
from arkern.ops._validate import FLOAT_DTYPES, check_choice, check_int, check_same, check_shape, check_tensor
from arkern.reference import shifted_conv2d as ref

OP = "shifted_conv2d"
OP_T = "shifted_conv_transpose2d"
SHIFTS = ref.SHIFTS
STRIDES = (1, 2)

LIB.define("shifted_conv2d(Tensor x, Tensor weight, Tensor? bias, str shift, int stride) -> Tensor")
LIB.define("shifted_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, str shift, int stride, "
           "bool[3] output_mask) -> (Tensor, Tensor, Tensor)")
LIB.define("shifted_conv_transpose2d(Tensor x, Tensor weight, Tensor? bias, str shift, int stride) -> Tensor")
LIB.define("shifted_conv_transpose2d_backward(Tensor grad_out, Tensor x, Tensor weight, str shift, int stride, "
           "bool[3] output_mask) -> (Tensor, Tensor, Tensor)")


def _ceil_div(a, b):
    return (a + b - 1) // b


@torch.library.register_fake("arkern::shifted_conv2d")
def _fake(x, weight, bias, shift, stride):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[0], _ceil_div(h, stride), _ceil_div(w, stride)))


@torch.library.register_fake("arkern::shifted_conv_transpose2d")
def _fake_t(x, weight, bias, shift, stride):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[1], h * stride, w * stride))


def _fake_grads(x, weight, bias_size, output_mask):
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else x.new_empty(0)
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else x.new_empty(0)
    gb = x.new_empty(bias_size) if output_mask[2] else x.new_empty(0)
    return gx, gw, gb


@torch.library.register_fake("arkern::shifted_conv2d_backward")
def _fake_backward(grad_out, x, weight, shift, stride, output_mask):
    return _fake_grads(x, weight, weight.shape[0], output_mask)


@torch.library.register_fake("arkern::shifted_conv_transpose2d_backward")
def _fake_backward_t(grad_out, x, weight, shift, stride, output_mask):
    return _fake_grads(x, weight, weight.shape[1], output_mask)


def _setup_context(ctx, inputs, output):
    x, weight, bias, shift, stride = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.shift, ctx.stride = shift, stride


def _needs(ctx) -> tuple[bool, bool, bool]:
    return ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    needs = _needs(ctx)
    grads = torch.ops.arkern.shifted_conv2d_backward(grad_out.contiguous(), x, weight, ctx.shift, ctx.stride,
                                                     list(needs))
    return *optional_grads(grads, needs), None, None


def _backward_t(ctx, grad_out):
    x, weight = ctx.saved_tensors
    needs = _needs(ctx)
    grads = torch.ops.arkern.shifted_conv_transpose2d_backward(grad_out.contiguous(), x, weight, ctx.shift,
                                                               ctx.stride, list(needs))
    return *optional_grads(grads, needs), None, None


torch.library.register_autograd("arkern::shifted_conv2d", _backward, setup_context=_setup_context)
torch.library.register_autograd("arkern::shifted_conv_transpose2d", _backward_t, setup_context=_setup_context)

_REF_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_CPU_DTYPES = (torch.float32, torch.float64)

BACKENDS = OpBackends(OP)
BACKENDS.register("reference", ref.shifted_conv2d, _REF_DTYPES)
BACKENDS.register("cpu", lambda x, w, b, shift, stride: torch.ops.arkern.shifted_conv2d(x, w, b, shift, stride),
                  _CPU_DTYPES, torch_op="arkern::shifted_conv2d")

BACKENDS_T = OpBackends(OP_T)
BACKENDS_T.register("reference", ref.shifted_conv_transpose2d, _REF_DTYPES)
BACKENDS_T.register("cpu", lambda x, w, b, shift, stride: torch.ops.arkern.shifted_conv_transpose2d(
    x, w, b, shift, stride), _CPU_DTYPES, torch_op="arkern::shifted_conv_transpose2d")


def _triton(x, w, b, shift, stride):
    from arkern.triton.shifted_conv2d import shifted_conv2d as kernel  # Triton is imported lazily

    return kernel(x, w, b, shift, stride)


def _triton_t(x, w, b, shift, stride):
    from arkern.triton.shifted_conv2d import shifted_conv_transpose2d as kernel

    return kernel(x, w, b, shift, stride)


BACKENDS.register("triton", _triton, (torch.float32, torch.float64))
BACKENDS_T.register("triton", _triton_t, (torch.float32, torch.float64))


def _validate_common(op: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shift: str,
                     stride: int) -> None:
    check_tensor(op, "x", x, ndim=4, dtypes=FLOAT_DTYPES)
    check_tensor(op, "weight", weight, ndim=4, dtypes=FLOAT_DTYPES)
    if bias is not None:
        check_tensor(op, "bias", bias, ndim=1, dtypes=FLOAT_DTYPES)
    check_same(op, "x", x, weight=weight, bias=bias)
    if x.device.type == "cpu" and x.dtype == torch.float16:
        raise TypeError(f"{op}: x has dtype float16, which is not supported on cpu "
                        f"(use float32, float64 or bfloat16)")
    check_choice(op, "shift", shift, SHIFTS)
    check_int(op, "stride", stride)
    check_choice(op, "stride", stride, STRIDES)
    kh, kw = weight.shape[-2:]
    if kh < 1 or kw < 1:
        raise ValueError(f"{op}: weight must have a kernel of at least 1x1, got shape {tuple(weight.shape)}")
    if shift == "down" and kw % 2 == 0:
        raise ValueError(f"{op}: shift 'down' needs an odd kernel width (centred columns), got weight kernel "
                         f"{kh}x{kw}; use shift='downright' for even widths")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{op}: x must have height and width >= 1, got shape {tuple(x.shape)}")
    if x.shape[1] < 1 or weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"{op}: channel counts must be >= 1, got x {tuple(x.shape)} and weight "
                         f"{tuple(weight.shape)}")


def validate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shift: str, stride: int) -> None:
    """Check a shifted_conv2d call: x (N, Cin, H, W), weight (Cout, Cin, kH, kW), bias (Cout,)."""
    _validate_common(OP, x, weight, bias, shift, stride)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{OP}: x has {x.shape[1]} channels but weight expects {weight.shape[1]} "
                         f"(weight shape {tuple(weight.shape)} is (Cout, Cin, kH, kW))")
    if bias is not None:
        check_shape(OP, "bias", bias, (weight.shape[0],), "Cout = weight.shape[0]")


def validate_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shift: str,
                       stride: int) -> None:
    """Check a shifted_conv_transpose2d call: x (N, Cin, H, W), weight (Cin, Cout, kH, kW), bias (Cout,)."""
    _validate_common(OP_T, x, weight, bias, shift, stride)
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"{OP_T}: x has {x.shape[1]} channels but weight expects {weight.shape[0]} "
                         f"(weight shape {tuple(weight.shape)} is (Cin, Cout, kH, kW))")
    if bias is not None:
        check_shape(OP_T, "bias", bias, (weight.shape[1],), "Cout = weight.shape[1]")


def shifted_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shift: str,
                   stride: int = 1, *, backend: str | None = None) -> torch.Tensor:
    """PixelCNN++ shifted causal convolution (down_shifted_conv2d / down_right_shifted_conv2d).

    Args:
        x: (N, Cin, H, W).
        weight: (Cout, Cin, kH, kW); kW odd for shift='down'.
        bias: (Cout,) or None.
        shift: 'down' (pad top kH-1, left and right (kW-1)//2) or 'downright' (pad top kH-1, left kW-1).
        stride: 1 or 2.
        backend: "reference", "cpu", ... or None for the fastest available.

    Returns:
        (N, Cout, ceil(H / stride), ceil(W / stride)). Output (i, j) depends only on input rows
        <= i * stride (and for 'downright' on columns <= j * stride).
    """
    validate(x, weight, bias, shift, stride)
    kernel = BACKENDS.select(backend, x.device, x.dtype)
    return kernel.fn(x, weight, bias, shift, stride)


def shifted_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shift: str,
                             stride: int = 2, *, backend: str | None = None) -> torch.Tensor:
    """PixelCNN++ up-path transposed conv (down_shifted_deconv2d / down_right_shifted_deconv2d).

    conv_transpose2d(x, weight, bias, stride, output_padding=stride-1), cropped to rows [0, H*stride)
    and columns [(kW-1)//2, ...) ('down') or [0, W*stride) ('downright').

    Args:
        x: (N, Cin, H, W).
        weight: (Cin, Cout, kH, kW) as nn.ConvTranspose2d; kW odd for shift='down'.
        bias: (Cout,) or None.
        shift: 'down' or 'downright'.
        stride: 1 or 2.
        backend: "reference", "cpu", ... or None for the fastest available.

    Returns:
        (N, Cout, H * stride, W * stride). Output (i, j) depends only on input rows <= i // stride
        (and for 'downright' on columns <= j // stride).
    """
    validate_transpose(x, weight, bias, shift, stride)
    kernel = BACKENDS_T.select(backend, x.device, x.dtype)
    return kernel.fn(x, weight, bias, shift, stride)
