"""The categorical draw of the fused CPU samplers (csrc/cpu/decode_sampler.h, torch.ops.arkern._categorical_draw)
against its reference, arkern.distributions.sample_categorical; and its float32 pre-pass (screen) against its
own float64 steps, bit for bit, on uniforms placed on the CDF boundaries where a wrong bound would show."""

import pytest
import torch

from arkern._ext import load_extension
from arkern.distributions import sample_categorical

pytestmark = pytest.mark.skipif(load_extension() is not None, reason="the compiled extension is not built")


def draw(logits, u, temperature=1.0, top_k=0, top_p=1.0, screen=True):
    return torch.ops.arkern._categorical_draw(logits, u, temperature, top_k, top_p, screen)


def boundary_uniforms(logits: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per row, u = C_i / C_{K-1} for a random class i, C the float64 running sums of exp(z - max z)."""
    z = logits.double()
    c = torch.cumsum(torch.exp(z - z.amax(-1, keepdim=True)), -1)
    i = torch.randint(0, logits.shape[1], (logits.shape[0],), generator=g)
    return (c.gather(1, i[:, None])[:, 0] / c[:, -1]).clamp(max=1 - 2**-53)


@pytest.mark.parametrize("k", [1, 2, 3, 15, 16, 17, 100, 256, 257, 1000, 4097])
@pytest.mark.parametrize("scale", [0.01, 1.0, 8.0, 100.0, 1e4])
def test_screen_equals_float64_steps_on_boundaries(k, scale):
    g = torch.Generator().manual_seed(k * 7 + int(scale))
    logits = (torch.randn(300, k, generator=g) * scale).float()
    ub = boundary_uniforms(logits, g)
    for delta in (0.0, 2**-53, -(2**-53), 1e-13, -1e-13, 1e-9, -1e-9, 1e-7, -1e-7, 2e-6, -2e-6, 1e-4, -1e-4):
        u = (ub + delta).clamp(0, 1 - 2**-53)
        assert torch.equal(draw(logits, u), draw(logits, u, screen=False)), delta
    u = torch.rand(300, dtype=torch.float64, generator=g)
    assert torch.equal(draw(logits, u), draw(logits, u, screen=False))


def test_ties_peaks_and_flat_rows():
    g = torch.Generator().manual_seed(1)
    rows = [torch.zeros(256), torch.full((256,), 3.0e38), torch.full((256,), -3.0e38),
            torch.tensor([0.0] * 255 + [80.0]), torch.tensor([-100.0] * 200 + [0.0] * 56),
            torch.arange(256.0) * 1e-7, torch.arange(256.0) * -0.5, torch.tensor([3.0e38, -3.0e38] * 128)]
    logits = torch.stack(rows).float().repeat(40, 1)
    n = len(logits)
    for u in (torch.rand(n, dtype=torch.float64, generator=g), boundary_uniforms(logits, g),
              torch.zeros(n, dtype=torch.float64), torch.full((n,), 1 - 2**-53, dtype=torch.float64)):
        got = draw(logits, u)
        assert torch.equal(got, draw(logits, u, screen=False))
        assert torch.equal(got, sample_categorical(logits, u))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_on_random_uniforms(dtype):
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2000, 256, generator=g) * 4).to(dtype)
    u = torch.rand(2000, dtype=torch.float64, generator=g)
    assert torch.equal(draw(logits, u), sample_categorical(logits, u))


def test_batch_one_and_non_contiguous():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(256, 64, generator=g).float().t()  # (64, 256), not contiguous
    u = torch.rand(128, dtype=torch.float64, generator=g)[::2]
    assert torch.equal(draw(logits, u), sample_categorical(logits, u))
    assert torch.equal(draw(logits[:1], u[:1]), sample_categorical(logits[:1], u[:1]))


@pytest.mark.parametrize("warpers", [dict(temperature=0.7), dict(top_k=5), dict(top_p=0.9),
                                     dict(temperature=1.3, top_k=40, top_p=0.95)])
def test_warped_rows_take_the_float64_steps(warpers):
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(500, 256, generator=g) * 3).float()
    u = torch.rand(500, dtype=torch.float64, generator=g)
    args = dict(temperature=1.0, top_k=0, top_p=1.0) | warpers
    ref = sample_categorical(logits, u, temperature=args["temperature"], top_k=args["top_k"] or None,
                             top_p=args["top_p"] if args["top_p"] < 1 else None)
    assert torch.equal(draw(logits, u, **args), ref)


def test_nan_and_infinite_logits_take_the_float64_steps():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(64, 256, generator=g).float()
    logits[0, 3] = float("nan")
    logits[1, :100] = float("-inf")
    logits[2, 7] = float("inf")
    u = torch.rand(64, dtype=torch.float64, generator=g)
    got = draw(logits, u)
    assert torch.equal(got, draw(logits, u, screen=False))
    assert ((got >= 0) & (got < 256)).all()
    assert torch.equal(got[1:2], sample_categorical(logits[1:2], u[1:2]))
    assert torch.equal(got[3:], sample_categorical(logits[3:], u[3:]))


@pytest.mark.parametrize("logits,u,match", [
    (torch.zeros(4, 8, dtype=torch.int32), torch.rand(4, dtype=torch.float64), "float32 or float64"),
    (torch.zeros(8), torch.rand(1, dtype=torch.float64), r"\(N, K\)"),
    (torch.zeros(4, 0), torch.rand(4, dtype=torch.float64), r"K >= 1"),
    (torch.zeros(4, 8), torch.rand(4, dtype=torch.float32), "u must be float64"),
    (torch.zeros(4, 8), torch.rand(3, dtype=torch.float64), r"shape \(4,\)"),
])
def test_bad_input(logits, u, match):
    with pytest.raises(RuntimeError, match=match):
        draw(logits, u)


def test_bad_warpers():
    with pytest.raises(RuntimeError, match="temperature > 0"):
        draw(torch.zeros(2, 4), torch.rand(2, dtype=torch.float64), temperature=0.0)
