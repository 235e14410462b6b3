"""Generic layer-level incremental (cached) decoding for image models built from arkern.nn layers.

Principle (docs/design.md, "Cached decoding"): the output of a masked / shifted conv at pixel (i, j) depends
only on inputs at pixels that come earlier in raster order (or on earlier rows). So each layer keeps a cache
of its *input* map, and one decoding step writes the new input column at (i, j) and computes only the output
column at (i, j) over the taps the layer keeps (zero outside the image).

Every decodable layer gets an :class:`IncrementalLayer` view through :func:`incremental`:

- ``reset(batch, height, width, dtype=, device=)`` allocates empty caches for one image size;
- ``step(x, i, j)``: x (N, Cin) = the layer input at pixel (i, j) -> (N, Cout), its output at (i, j);
- ``step_row(x, i)``: x (N, Cin, W) = the whole input row i -> (N, Cout, W), the output row i (for
  stacks that only look at rows above, e.g. Gated PixelCNN's vertical stack or PixelCNN++'s down stream).

Calling ``step`` again at the same (i, j) overwrites the cached input there: that is how colour groups
work (a pixel is C sub-steps; output group g at (i, j) is exact once the inputs of groups <= g are known).

Supported out of the box: ``arkern.nn.MaskedConv2d``, ``arkern.nn.ShiftedConv2d`` (stride 1), 1x1
``nn.Conv2d``, pointwise activations, ``nn.Sequential``, and the blocks of :mod:`arkern.nn.blocks`
(:class:`Residual`, :class:`DownShift`, :class:`RightShift`, :class:`Gate`, :class:`ConcatELU`). A user's own
module opts in by defining ``incremental() -> IncrementalLayer`` or, if it acts on each pixel independently, by setting
``arkern_pointwise = True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arkern.nn.blocks import DownShift, Residual, RightShift
from arkern.nn.masked_conv2d import MaskedConv2d, masked_conv_mask
from arkern.nn.shifted_conv2d import ShiftedConv2d

__all__ = ["IncrementalLayer", "incremental", "run_incremental", "POINTWISE_TYPES"]

# Modules that act on every pixel independently (so on an (N, C) vector as on an (N, C, H, W) map).
POINTWISE_TYPES: tuple[type, ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.GLU,
    nn.Dropout, nn.Dropout2d,
)


class IncrementalLayer:
    """One layer's decoding state. Subclasses override :meth:`step` and/or :meth:`step_row`."""

    def reset(self, batch: int, height: int, width: int, *, dtype: torch.dtype,
              device: torch.device | str = "cpu") -> None:
        """Start a new image of size (height, width) for `batch` samples (clears every cache)."""

    def step(self, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """x (N, Cin) input at pixel (i, j) -> (N, Cout) output at (i, j)."""
        raise TypeError(f"{type(self).__name__} cannot be decoded one pixel at a time")

    def step_row(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """x (N, Cin, W) input row i -> (N, Cout, W) output row i."""
        raise TypeError(f"{type(self).__name__} cannot be decoded one row at a time")

    stateless = False

    def write(self, x: torch.Tensor, i: int, j: int) -> None:
        """Commit the final input x (N, Cin) at (i, j) into the cache without computing an output.

        When sampling, the last colour group of pixel (i, j) is drawn after the last step at (i, j), so
        the first cached layer must still receive it before step (i, j+1). Deeper layers already hold
        exact inputs at (i, j) (their group g depends only on image groups < g there).
        """
        raise TypeError(f"{type(self).__name__} has no input cache to write")


# ---------------------------------------------------------------------------------- incremental views


# exact pointwise types whose functional form is called directly (no module-call overhead per step)
_FUNCTIONAL = {nn.ReLU: torch.relu, nn.Tanh: torch.tanh, nn.Sigmoid: torch.sigmoid, nn.Identity: lambda x: x}


class _Pointwise(IncrementalLayer):
    stateless = True

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        fn = _FUNCTIONAL.get(type(module))
        if fn is not None and not module._forward_hooks and not module._forward_pre_hooks:
            self.step = lambda x, i, j: fn(x)

    def step(self, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
        return self.module(x[:, :, None, None])[:, :, 0, 0]

    def step_row(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.module(x[:, :, None, :])[:, :, 0, :]


class _Linear(IncrementalLayer):
    """A 1x1 conv (plain, or masked with its centre-tap channel mask) as a matrix product."""

    stateless = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        self.weight, self.bias, self.mask = weight, bias, mask

    def reset(self, batch: int, height: int, width: int, *, dtype: torch.dtype,
              device: torch.device | str = "cpu") -> None:
        w = self.weight.detach()
        if self.mask is not None:
            w = w * self.mask.to(device=w.device, dtype=w.dtype)
        self.w = w.reshape(w.shape[0], -1).to(device=device, dtype=dtype)
        self.b = None if self.bias is None else self.bias.detach().to(device=device, dtype=dtype)

    def step(self, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
        return F.linear(x, self.w, self.b)

    def step_row(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return F.linear(x.transpose(1, 2), self.w, self.b).transpose(1, 2)


class _CachedConv2d(IncrementalLayer):
    """A stride-1 conv whose output (i, j) reads input rows i-top..i (never below) through a cache.

    The cache holds the input, zero-padded by `top` rows above and `left` / `right` columns, so input
    (i, j) lives at cache[..., top + i, left + j] and the window of output (i, j) starts at cache[..., i, j].
    `weight` holds only the kept rows (Cout, Cin, rows, kW); taps to the right of the current pixel in the
    last row must be zero for :meth:`step` (`pixel_ok`), else only :meth:`step_row` is exact.
    """

    def __init__(self, weight_fn, bias: torch.Tensor | None, top: int, left: int, right: int,
                 dilation: tuple[int, int], pixel_ok: bool, name: str) -> None:
        self.weight_fn, self.bias = weight_fn, bias
        self.top, self.left, self.right, self.dilation = top, left, right, dilation
        self.pixel_ok, self.name = pixel_ok, name

    def reset(self, batch: int, height: int, width: int, *, dtype: torch.dtype,
              device: torch.device | str = "cpu") -> None:
        w = self.weight_fn().detach().to(device=device, dtype=dtype)
        self.w4 = w.contiguous()
        self.wt = w.reshape(w.shape[0], -1).t().contiguous()  # (Cin*rows*kW, Cout)
        self.b = None if self.bias is None else self.bias.detach().to(device=device, dtype=dtype)
        self.cache = torch.zeros(batch, w.shape[1], height + self.top, width + self.left + self.right,
                                 dtype=dtype, device=device)
        self.height, self.width = height, width

    def _check(self, x: torch.Tensor, i: int) -> None:
        if x.shape[0] != self.cache.shape[0] or x.shape[1] != self.cache.shape[1]:
            raise ValueError(f"{self.name}: input must be (N={self.cache.shape[0]}, Cin={self.cache.shape[1]}, "
                             f"...), got {tuple(x.shape)}")
        if not 0 <= i < self.height:
            raise ValueError(f"{self.name}: row {i} outside the image of height {self.height}")

    def write(self, x: torch.Tensor, i: int, j: int) -> None:
        self._check(x, i)
        self.cache[:, :, self.top + i, self.left + j] = x

    def step(self, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
        if not self.pixel_ok:
            raise TypeError(f"{self.name}: output (i, j) sees pixels right of (i, j) in row i; decode it "
                            "one row at a time (step_row)")
        self._check(x, i)
        if not 0 <= j < self.width:
            raise ValueError(f"{self.name}: column {j} outside the image of width {self.width}")
        dh, dw = self.dilation
        rows, kw = self.w4.shape[2], self.w4.shape[3]
        self.cache[:, :, self.top + i, self.left + j] = x
        patch = self.cache[:, :, i:i + (rows - 1) * dh + 1:dh, j:j + (kw - 1) * dw + 1:dw]
        patch = patch.reshape(x.shape[0], -1)
        return torch.addmm(self.b, patch, self.wt) if self.b is not None else patch @ self.wt

    def step_row(self, x: torch.Tensor, i: int) -> torch.Tensor:
        self._check(x, i)
        if x.dim() != 3 or x.shape[2] != self.width:
            raise ValueError(f"{self.name}: row input must be (N, Cin, W={self.width}), got {tuple(x.shape)}")
        dh, dw = self.dilation
        rows = self.w4.shape[2]
        self.cache[:, :, self.top + i, self.left:self.left + self.width] = x
        window = self.cache[:, :, i:i + (rows - 1) * dh + 1]
        return F.conv2d(window, self.w4, self.b, dilation=self.dilation)[:, :, 0, :]


class _IncrementalSequential(IncrementalLayer):
    def __init__(self, layers: list[IncrementalLayer]) -> None:
        self.layers = layers

    def reset(self, batch: int, height: int, width: int, *, dtype: torch.dtype,
              device: torch.device | str = "cpu") -> None:
        for layer in self.layers:
            layer.reset(batch, height, width, dtype=dtype, device=device)

    def step(self, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
        for layer in self.layers:
            x = layer.step(x, i, j)
        return x

    def write(self, x: torch.Tensor, i: int, j: int) -> None:
        for layer in self.layers:  # through leading pointwise layers to the first cache
            if not layer.stateless:
                layer.write(x, i, j)
                return
            x = layer.step(x, i, j)

    def step_row(self, x: torch.Tensor, i: int) -> torch.Tensor:
        for layer in self.layers:
            x = layer.step_row(x, i)
        return x


class _IncrementalResidual(IncrementalLayer):
    def __init__(self, body: IncrementalLayer) -> None:
        self.body = body

    def reset(self, batch: int, height: int, width: int, *, dtype: torch.dtype,
              device: torch.device | str = "cpu") -> None:
        self.body.reset(batch, height, width, dtype=dtype, device=device)

    def step(self, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
        return x + self.body.step(x, i, j)

    def write(self, x: torch.Tensor, i: int, j: int) -> None:
        self.body.write(x, i, j)

    def step_row(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x + self.body.step_row(x, i)


class _IncrementalShift(IncrementalLayer):
    """DownShift / RightShift: output (i, j) = cached input (i - rows, j - cols), zero outside."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols

    def reset(self, batch: int, height: int, width: int, *, dtype: torch.dtype,
              device: torch.device | str = "cpu") -> None:
        self.cache: torch.Tensor | None = None
        self.shape = (batch, height, width, dtype, device)

    def _cache_for(self, x: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            n, h, w, dtype, device = self.shape
            self.cache = torch.zeros(n, x.shape[1], h + self.rows, w + self.cols, dtype=dtype, device=device)
        return self.cache

    def write(self, x: torch.Tensor, i: int, j: int) -> None:
        self._cache_for(x)[:, :, i + self.rows, j + self.cols] = x

    def step(self, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
        self.write(x, i, j)
        return self.cache[:, :, i, j].clone()

    def step_row(self, x: torch.Tensor, i: int) -> torch.Tensor:
        c = self._cache_for(x)
        w = x.shape[2]
        c[:, :, i + self.rows, self.cols:self.cols + w] = x
        return c[:, :, i, :w].clone()


# ------------------------------------------------------------------------------------------ dispatch


def _masked_conv(layer: nn.Module) -> IncrementalLayer:
    kh, kw = layer.kernel_size
    dh, dw = layer.dilation
    mask = masked_conv_mask(layer).to(layer.weight.device)
    if (kh, kw) == (1, 1):
        return _Linear(layer.weight, layer.bias, mask)
    r, c = kh // 2, kw // 2
    # rows below the centre are masked out: keep rows 0..r only (the centre row's right half is zero)
    weight_fn = lambda: (layer.weight * mask.to(layer.weight.dtype))[:, :, : r + 1, :]
    return _CachedConv2d(weight_fn, layer.bias, r * dh, c * dw, c * dw, (dh, dw), True, "MaskedConv2d")


def _shifted_conv(layer: nn.Module) -> IncrementalLayer:
    if tuple(layer.stride) != (1, 1):
        raise TypeError("incremental: ShiftedConv2d with stride != 1 has no per-pixel view; decode the "
                        "down-sampled stream with a model-specific schedule")
    kh, kw = layer.kernel_size
    if layer.shift == "down":
        left, right = (kw - 1) // 2, (kw - 1) // 2
    elif layer.shift == "downright":
        left, right = kw - 1, 0
    else:
        raise ValueError(f"incremental: unknown ShiftedConv2d shift {layer.shift!r}")
    return _CachedConv2d(lambda: layer.weight, layer.bias, kh - 1, left, right, (1, 1), right == 0,
                         f"ShiftedConv2d({layer.shift})")


def _is_pointwise_conv(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and tuple(m.kernel_size) == (1, 1) and tuple(m.stride) == (1, 1)
            and m.groups == 1 and m.padding in ((0, 0), "same", "valid"))


def incremental(module: nn.Module) -> IncrementalLayer:
    """The incremental (cached) view of `module`; raises TypeError naming modules it cannot decode.

    The view reads the module's parameters at :meth:`IncrementalLayer.reset`, so train first, then reset.
    """
    if callable(getattr(module, "incremental", None)):  # a user layer that implements the protocol
        return module.incremental()
    if isinstance(module, Residual):
        return _IncrementalResidual(incremental(module.body))
    if isinstance(module, DownShift):
        return _IncrementalShift(rows=1, cols=0)
    if isinstance(module, RightShift):
        return _IncrementalShift(rows=0, cols=1)
    if isinstance(module, MaskedConv2d):
        if getattr(module, "padding_mode", "zeros") != "zeros":
            raise TypeError("incremental: MaskedConv2d needs padding_mode='zeros'")
        return _masked_conv(module)
    if isinstance(module, ShiftedConv2d):
        return _shifted_conv(module)
    if isinstance(module, nn.Sequential):
        return _IncrementalSequential([incremental(m) for m in module])
    if _is_pointwise_conv(module):
        return _Linear(module.weight, module.bias, None)
    if isinstance(module, nn.BatchNorm2d) and not module.training:
        return _Pointwise(module)
    if isinstance(module, POINTWISE_TYPES) or getattr(module, "arkern_pointwise", False):
        return _Pointwise(module)
    raise TypeError(f"incremental: cannot decode {type(module).__name__} one position at a time; give it an "
                    "`incremental()` method or set `arkern_pointwise = True` if it acts on each pixel alone")


@torch.no_grad()
def run_incremental(module: nn.Module, x: torch.Tensor, *, rows: bool = False) -> torch.Tensor:
    """Teacher-forced decoding: feed `x` pixel by pixel (or row by row) through the cached view.

    Shapes: x (N, Cin, H, W) -> (N, Cout, H, W), equal to ``module(x)`` up to float rounding. This is
    the exactness check of the protocol (and of any user layer that implements it).
    """
    if x.dim() != 4:
        raise ValueError(f"run_incremental: x must be (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    view = incremental(module)
    view.reset(n, h, w, dtype=x.dtype, device=x.device)
    if rows:
        return torch.stack([view.step_row(x[:, :, i, :], i) for i in range(h)], dim=2)
    cols = [[view.step(x[:, :, i, j], i, j) for j in range(w)] for i in range(h)]
    return torch.stack([torch.stack(r, dim=-1) for r in cols], dim=2)
