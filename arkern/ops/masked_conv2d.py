"""masked_conv2d: PixelCNN masked convolution, with kernels that compute only the taps the mask keeps.

Registered as ``torch.ops.arkern.masked_conv2d`` (+ ``masked_conv2d_backward``); the public face is
:func:`masked_conv2d`, which validates, chooses a backend and runs it. Semantics (the reference defines them):
:func:`arkern.reference.masked_conv2d.masked_conv2d`.
"""

from __future__ import annotations

import torch

from arkern.backends import OpBackends, forced_backend
from arkern.masks import pixelcnn_mask
from arkern.ops._library import LIB, optional_grads
from arkern.ops._validate import check_choice, check_int, check_same, check_shape, check_tensor
from arkern.reference import masked_conv2d as ref

OP = "masked_conv2d"
MASK_TYPES = ("A", "B")

LIB.define("masked_conv2d(Tensor x, Tensor weight, Tensor? bias, str mask_type, int color_groups=1, "
           "int dilation=1) -> Tensor")
LIB.define("masked_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, str mask_type, int color_groups, "
           "int dilation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)")


@torch.library.register_fake("arkern::masked_conv2d")
def _fake(x, weight, bias, mask_type, color_groups=1, dilation=1):
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))


@torch.library.register_fake("arkern::masked_conv2d_backward")
def _fake_backward(grad_out, x, weight, mask_type, color_groups, dilation, output_mask):
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else x.new_empty(0)
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else weight.new_empty(0)
    gb = weight.new_empty(weight.shape[0]) if output_mask[2] else weight.new_empty(0)
    return gx, gw, gb


def _setup_context(ctx, inputs, output):
    x, weight, bias, mask_type, color_groups, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.args = (mask_type, color_groups, dilation)


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
    grads = torch.ops.arkern.masked_conv2d_backward(grad_out.contiguous(), x, weight, *ctx.args, list(needs))
    return *optional_grads(grads, needs), None, None, None


torch.library.register_autograd("arkern::masked_conv2d", _backward, setup_context=_setup_context)

BACKENDS = OpBackends(OP)
BACKENDS.register("reference", ref.masked_conv2d, (torch.float32, torch.float64, torch.bfloat16, torch.float16))
BACKENDS.register("cpu", lambda x, w, b, t, g, d: torch.ops.arkern.masked_conv2d(x, w, b, t, g, d),
                  (torch.float32, torch.float64), torch_op="arkern::masked_conv2d")
BACKENDS.register("cuda", lambda x, w, b, t, g, d: torch.ops.arkern.masked_conv2d(x, w, b, t, g, d),
                  (torch.float32, torch.float64), torch_op="arkern::masked_conv2d")


def backward_by_masked_weight(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask_type: str,
                              color_groups: int, dilation: int, output_mask: list[bool]):
    """Gradients of masked_conv2d from a dense convolution with the masked weight (the CUDA backward).

    The CUDA forward kernel skips masked taps; its backward is two dense convolutions (cuDNN on a GPU)
    with the weight multiplied by the mask, and the weight gradient masked, so masked taps get exactly
    zero. Device-agnostic, so it is tested on CPU against the C++ backward.
    """
    cout, cin, kh, kw = weight.shape
    mask = pixelcnn_mask(cout, cin, (kh, kw), mask_type, color_groups, dtype=weight.dtype, device=weight.device)
    pad = ((kh // 2) * dilation, (kw // 2) * dilation)
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad_out, x, weight * mask, [weight.shape[0]], [1, 1], list(pad), [dilation, dilation], False, [0, 0], 1,
        list(output_mask))
    empty = weight.new_empty(0)
    return (gx if output_mask[0] else x.new_empty(0), gw * mask if output_mask[1] else empty,
            gb if output_mask[2] else empty)


torch.library.register_kernel("arkern::masked_conv2d_backward", "cuda", backward_by_masked_weight)


def _triton(x, w, b, t, g, d):
    from arkern.triton.masked_conv2d import masked_conv2d as kernel  # Triton is imported lazily

    return kernel(x, w, b, t, g, d)


BACKENDS.register("triton", _triton, (torch.float32, torch.float64))


def validate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask_type: str,
             color_groups: int, dilation: int) -> None:
    """Check shapes, dtypes, devices and parameters of a masked_conv2d call (raises ValueError/TypeError)."""
    check_tensor(OP, "x", x, ndim=4)
    check_tensor(OP, "weight", weight, ndim=4)
    if bias is not None:
        check_tensor(OP, "bias", bias, ndim=1)
    check_same(OP, "x", x, weight=weight, bias=bias)
    cout, cin, kh, kw = weight.shape
    if x.shape[1] != cin:
        raise ValueError(f"{OP}: x has {x.shape[1]} channels (dim 1) but weight expects {cin} input channels "
                         f"(weight shape {tuple(weight.shape)})")
    if cout < 1 or cin < 1:
        raise ValueError(f"{OP}: weight must have at least one output and input channel, got {tuple(weight.shape)}")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"{OP}: weight kernel size (kH, kW) must be odd in both dimensions, got {(kh, kw)}")
    if bias is not None:
        check_shape(OP, "bias", bias, (cout,), "out_channels of weight")
    check_choice(OP, "mask_type", mask_type, MASK_TYPES)
    check_int(OP, "color_groups", color_groups, minimum=1)
    if cin % color_groups or cout % color_groups:
        raise ValueError(f"{OP}: color_groups={color_groups} must divide the input channels ({cin}) and the output "
                         f"channels ({cout})")
    check_int(OP, "dilation", dilation, minimum=1)


def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask_type: str,
                  color_groups: int = 1, dilation: int = 1, *, backend: str | None = None) -> torch.Tensor:
    """PixelCNN masked 2-D convolution, "same" zero padding, stride 1.

    Args:
        x: (N, Cin, H, W).
        weight: (Cout, Cin, kH, kW), kH and kW odd (may differ: 1x1, 3x3, 7x7, 1x5, ...).
        bias: (Cout,) or None.
        mask_type: "A" (the centre pixel does not see itself: first layer) or "B" (it does).
        color_groups: G contiguous channel groups (e.g. 3 for RGB); must divide Cin and Cout. At the
            centre tap input group gi feeds output group go iff gi < go ('A') or gi <= go ('B').
        dilation: spacing between taps (>= 1); padding is (k // 2) * dilation.
        backend: "reference", "cpu", ... or None for the fastest available.

    Returns:
        (N, Cout, H, W). Output (i, j) depends only on earlier pixels in raster order (and on the centre
        pixel's earlier colour groups); masked weights get exactly zero gradient.
    """
    validate(x, weight, bias, mask_type, color_groups, dilation)
    forced = backend or forced_backend()
    kernel_table = BACKENDS.kernels.get(forced) if forced is not None else None
    if kernel_table is not None and x.dtype not in kernel_table.dtypes:
        names = ", ".join(sorted(str(d).replace("torch.", "") for d in kernel_table.dtypes))
        raise TypeError(f"{OP}: x has dtype {str(x.dtype).replace('torch.', '')}, which backend {forced!r} does "
                        f"not support (supported: {names})")
    kernel = BACKENDS.select(backend, x.device, x.dtype)
    w, d = taps_inside(weight, dilation, x.shape[2], x.shape[3])
    return kernel.fn(x, w, bias, mask_type, color_groups, d)


def taps_inside(weight: torch.Tensor, dilation: int, H: int, W: int) -> tuple[torch.Tensor, int]:
    """Crop the kernel to the taps that can reach inside an H x W image (offset |(a - kH//2) * dilation| < H).

    The others read only the zero padding. The crop is centred, so the mask of the cropped kernel is the
    crop of the mask, and slicing keeps autograd exact (the dropped taps' gradient is zero). Work, memory
    and padding then depend on the image, not on the dilation: with dilation >= H and W only the centre
    tap is left. Returns (weight crop, dilation), the dilation 1 for a 1x1 crop.
    """
    kh, kw = weight.shape[2:]
    rh = min(kh // 2, max(0, H - 1) // dilation)
    rw = min(kw // 2, max(0, W - 1) // dilation)
    if rh == kh // 2 and rw == kw // 2:
        return weight, dilation
    crop = weight[:, :, kh // 2 - rh: kh // 2 + rh + 1, kw // 2 - rw: kw // 2 + rw + 1]
    return crop, dilation if rh or rw else 1
