"""Test helpers shared by tests/ and benchmarks/: tolerances defined once, an assert_close that says
where and how much values differ, and inputs made non-contiguous on purpose.
"""

from __future__ import annotations

import torch

# (rtol, atol) per dtype, for a kernel compared with the reference computed in the same dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float16: (2e-3, 2e-3),
}


def tolerances(dtype: torch.dtype, scale: float = 1.0) -> tuple[float, float]:
    """(rtol, atol) for `dtype`; `scale` widens them for long reductions (e.g. weight gradients)."""
    rtol, atol = TOLERANCES[dtype]
    return rtol * scale, atol * scale


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, name: str = "tensor",
                 dtype: torch.dtype | None = None, scale: float = 1.0) -> None:
    """Assert |actual - expected| <= atol + rtol*|expected| elementwise, with a readable report.

    The report gives the number of mismatches, the worst index, both values and the largest absolute
    and relative errors, so a failing kernel test says where it is wrong.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    rtol, atol = tolerances(dtype or expected.dtype, scale)
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    bad_nan = torch.isnan(a) != torch.isnan(e)
    err = (a - e).abs().nan_to_num(0.0)
    bad = (err > atol + rtol * e.abs().nan_to_num(0.0)) | bad_nan
    if bad.any():
        n = int(bad.sum())
        worst = int(torch.argmax(torch.where(bad, err, torch.zeros_like(err))).item()) if n else 0
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape)) if a.dim() else ()
        rel = (err / e.abs().clamp_min(1e-30)).max().item()
        raise AssertionError(
            f"{name}: {n}/{a.numel()} elements differ beyond rtol={rtol:g}, atol={atol:g}; "
            f"worst at {idx}: actual={a[idx].item():.10g} expected={e[idx].item():.10g}; "
            f"max abs err={err.max().item():.3g}, max rel err={rel:.3g}")


def assert_close_rounded(actual: torch.Tensor, expected: torch.Tensor, *, name: str = "tensor",
                         dtype: torch.dtype = torch.float32, fraction: float = 0.98) -> None:
    """:func:`assert_close` for two computations of the bfloat16 precision (intermediates rounded to bfloat16)
    that differ only in the order of their float32 sums: an intermediate whose value falls the other side of a
    bfloat16 rounding boundary moves everything computed from it by about one bfloat16 step. So: every element
    within bfloat16 tolerances, and at least `fraction` of them within `dtype` tolerances."""
    assert_close(actual, expected, name=name, dtype=torch.bfloat16)
    rtol, atol = tolerances(dtype)
    a, e = actual.detach().to(torch.float64).cpu(), expected.detach().to(torch.float64).cpu()
    close = ((a - e).abs() <= atol + rtol * e.abs()).double().mean().item() if a.numel() else 1.0
    if close < fraction:
        raise AssertionError(f"{name}: only {close:.4f} of the elements are within {dtype} tolerances "
                             f"(rtol={rtol:g}, atol={atol:g}); at least {fraction} expected")


def noncontiguous(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The same values as `t`, as a strided slice out of a larger tensor (every other element of `dim`)."""
    shape = list(t.shape)
    shape[dim] *= 2
    big = torch.empty(shape, dtype=t.dtype, device=t.device).normal_()
    index = [slice(None)] * t.dim()
    index[dim] = slice(0, None, 2)
    view = big[tuple(index)]
    with torch.no_grad():
        view.copy_(t)
    return view.requires_grad_(t.requires_grad)


def channels_last_1d(t: torch.Tensor) -> torch.Tensor:
    """(B, C, T) values laid out time-major, C fastest (the 'channel-last' layout of causal-conv1d)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(t.requires_grad)
