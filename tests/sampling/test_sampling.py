"""sample_categorical (inverse CDF on pre-drawn uniforms, temperature / top-k / top-p), noise, the generate
dispatch, μ-law and WAV files."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arkern import audio
from arkern.distributions import draw_uniforms, sample_categorical
from arkern.families import ModelFamily, family_of, register_family
from arkern.sampling import available_methods, generate


def _grid(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


def test_inverse_cdf_frequencies_match_softmax():
    # on an evenly spaced grid of uniforms, class c is drawn for a fraction of the grid equal to its
    # probability up to one grid step: the sampler is exactly the inverse CDF in class order
    logits = torch.tensor([0.3, -1.0, 2.0, 0.0, 1.1], dtype=torch.float64)
    n = 10000
    for temperature in (1.0, 0.5, 2.0):
        ys = sample_categorical(logits.expand(n, 5), _grid(n), temperature=temperature)
        freq = torch.bincount(ys, minlength=5).to(torch.float64) / n
        p = torch.softmax(logits / temperature, -1)
        assert torch.all((freq - p).abs() <= 1.0 / n + 1e-12)
        assert torch.all(ys[1:] >= ys[:-1])  # monotone in u


def test_top_k_and_top_p_keep_the_right_classes():
    logits = torch.tensor([2.0, 1.0, 0.5, 3.0, -1.0, 0.0], dtype=torch.float64)
    n = 4000
    u = _grid(n)
    ys = sample_categorical(logits.expand(n, 6), u, top_k=2)
    assert set(ys.tolist()) == {0, 3}
    p = torch.softmax(logits, -1)
    order = torch.argsort(p, descending=True)
    cum = torch.cumsum(p[order], 0)
    for top_p in (0.1, 0.5, 0.8, 0.95):
        nucleus = {int(c) for c, before in zip(order, cum - p[order]) if before < top_p}
        ys = sample_categorical(logits.expand(n, 6), u, top_p=top_p)
        assert set(ys.tolist()) == nucleus
        kept = torch.tensor(sorted(nucleus))
        freq = torch.bincount(ys, minlength=6).to(torch.float64)[kept] / n
        assert torch.all((freq - p[kept] / p[kept].sum()).abs() <= 1.0 / n + 1e-12)
    # neutral settings change nothing
    base = sample_categorical(logits.expand(n, 6), u)
    assert torch.equal(base, sample_categorical(logits.expand(n, 6), u, top_k=6, top_p=1.0))


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 40), rows=st.integers(1, 6), seed=st.integers(0, 2**16),
       temperature=st.floats(0.1, 5.0), top_k=st.one_of(st.none(), st.integers(1, 50)),
       top_p=st.one_of(st.none(), st.floats(0.01, 1.0)))
def test_property_draws_are_valid(k, rows, seed, temperature, top_k, top_p):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, k, generator=g, dtype=torch.float64) * 3
    u = torch.rand(rows, generator=g, dtype=torch.float64)
    ys = sample_categorical(logits, u, temperature=temperature, top_k=top_k, top_p=top_p)
    assert ys.shape == (rows,) and ys.dtype == torch.int64
    assert torch.all((ys >= 0) & (ys < k))
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, k), -1).values[:, -1]
        assert torch.all(logits.gather(1, ys[:, None])[:, 0] >= kth)
    # u = 0 draws the first class with nonzero kept mass; same inputs give the same draw
    assert torch.equal(ys, sample_categorical(logits, u, temperature=temperature, top_k=top_k, top_p=top_p))


def test_float32_logits_and_leading_dims():
    logits = torch.randn(2, 3, 7)
    u = torch.rand(2, 3, dtype=torch.float64)
    ys = sample_categorical(logits, u)
    assert ys.shape == (2, 3)
    assert torch.equal(ys, sample_categorical(logits.double(), u))


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), "temperature must be"),
    (dict(temperature=-2.0), "temperature must be"),
    (dict(top_k=0), "top_k must be"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(top_p=1.01), "top_p must be in"),
])
def test_bad_warpers(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_categorical(torch.randn(3, 4), torch.rand(3, dtype=torch.float64), **kwargs)


def test_bad_uniform_shape():
    with pytest.raises(ValueError, match="u must have shape"):
        sample_categorical(torch.randn(3, 4), torch.rand(4, dtype=torch.float64))


def test_draw_uniforms_seed_and_generator():
    a = draw_uniforms((3, 5), seed=7)
    b = draw_uniforms((3, 5), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.float64 and torch.all((a >= 0) & (a < 1))
    with pytest.raises(ValueError, match="not both"):
        draw_uniforms((2,), seed=1, generator=torch.Generator())


class _Counter(torch.nn.Module):
    """A toy autoregressive 'model' for the dispatch test: sample t = number of uniforms below 0.5 so far."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))


class _CounterFamily(ModelFamily):
    """A family declared in one class: sequences, one uniform per step, no fused op (so no "fused")."""

    name = "counter"
    model_types = (_Counter,)
    size_argument = "length"

    def __init__(self) -> None:
        self.seen: dict = {}

    def method_reasons(self, model):
        return {"fused": "the counter has no fused kernel"}

    def noise_shape(self, model, batch_size, size):
        return (batch_size, size)

    def sample(self, model, noise, *, size, method, temperature, top_k, top_p, condition, callback, progress,
               **options):
        self.seen.update(method=method, size=size, options=options)
        ys = torch.cumsum((noise < 0.5).to(torch.int64), 1)
        if callback is not None:
            callback(ys, 0)
        return ys


def test_register_family_dispatch():
    family = _CounterFamily()
    register_family(family)
    assert family_of(_Counter()) is family
    assert available_methods(_Counter()) == ("cached", "naive")
    chunks = []
    out = generate(_Counter(), 2, length=6, seed=3, progress=False, callback=lambda ys, s: chunks.append(s),
                   chunk_size=2)
    noise = draw_uniforms((2, 6), seed=3)
    assert torch.equal(out, torch.cumsum((noise < 0.5).to(torch.int64), 1))
    assert family.seen == {"method": "cached", "size": 6, "options": {"chunk_size": 2}} and chunks == [0]
    with pytest.raises(ValueError, match="no fused kernel"):
        generate(_Counter(), 1, length=3, method="fused", progress=False)
    with pytest.raises(ValueError, match="batch_size must be"):
        generate(_Counter(), 0, length=3, progress=False)
    with pytest.raises(ValueError, match="length must be"):
        generate(_Counter(), 1, length=-1, progress=False)
    with pytest.raises(TypeError, match="no model family for Linear"):
        generate(torch.nn.Linear(1, 1), 1, length=1)


# ---------------------------------------------------------------- audio

def test_mulaw_roundtrip():
    q = torch.arange(256)
    assert torch.equal(audio.mulaw_encode(audio.mulaw_decode(q, dtype=torch.float64)), q)
    x = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    err = (audio.mulaw_decode(audio.mulaw_encode(x), dtype=torch.float64) - x).abs()
    assert err.max() < 0.05 and err[abs(x) < 0.01].max() < 1e-3  # fine steps near zero
    assert audio.mulaw_encode(torch.tensor([0.0])).item() == 128
    assert audio.mulaw_encode(torch.tensor([-5.0, 5.0])).tolist() == [0, 255]
    with pytest.raises(ValueError, match="classes must be in"):
        audio.mulaw_decode(torch.tensor([256]))


def test_wav_roundtrip(tmp_path):
    x = torch.sin(torch.linspace(0, 60, 800)).unsqueeze(0) * 0.8
    path = str(tmp_path / "a.wav")
    audio.write_wav(path, x[0], sample_rate=8000)
    y, rate = audio.read_wav(path)
    assert rate == 8000 and y.shape == (1, 800)
    assert (y - x).abs().max() < 1.0 / 32767 + 1e-6
    stereo = torch.stack([x[0], -x[0]])
    audio.write_wav(path, stereo)
    y2, rate2 = audio.read_wav(path)
    assert rate2 == 16000 and y2.shape == (2, 800) and (y2 - stereo).abs().max() < 1e-4
    with pytest.raises(ValueError, match="audio must be"):
        audio.write_wav(path, torch.zeros(1, 1, 4))
