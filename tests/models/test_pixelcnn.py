"""PixelCNN: cached decoding equals the full forward (teacher-forced), naive and cached samplers return
identical images from the same noise, causality, bad input; and the per-pixel distributions."""

from __future__ import annotations

import math

import pytest
import torch

from arkern.decode.image import sample_raster
from arkern.decode.pixelcnnpp import PixelCNNppDecoder
from arkern.distributions import (
    bits_per_dim,
    dequantize,
    discretized_logistic_mixture_log_prob,
    mixture_params_size,
    quantize,
    sample_bernoulli,
    sample_categorical,
    sample_discretized_logistic_mixture,
)
from arkern.families import draw_noise
from arkern.models.pixelcnn import PixelCNN
from arkern.sampling import sample_image, teacher_forced_outputs
from arkern.testing import assert_close
from tests.conftest import image_model, pixelcnn, pixelcnnpp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("n,h,w", [(1, 5, 7), (3, 8, 8)])
def test_teacher_forced_cached_equals_forward(dtype, c, n, h, w):
    model = pixelcnn(c, dtype)
    x = torch.randint(0, model.num_classes, (n, c, h, w))
    with torch.no_grad():
        expected = model.output_map(model.prepare(x))
    assert_close(teacher_forced_outputs(model, x), expected, name="cached logits", dtype=dtype)
    # unknown channels of the current pixel may hold anything: the masks must hide them
    assert_close(teacher_forced_outputs(model, x, fill=123.0), expected, name="cached logits (fill)", dtype=dtype)


@pytest.mark.parametrize("c,shape", [(1, (8, 8)), (3, (8, 9)), (1, (11, 12))])
def test_naive_and_cached_samples_identical(c, shape):
    model = pixelcnn(c, torch.float64 if c == 1 else torch.float32, hidden=6 if c == 3 else 4, blocks=1)
    noise = draw_noise(model, 2, shape, seed=3)
    naive = sample_image(model, 2, shape=shape, method="naive", noise=noise)
    cached = sample_image(model, 2, shape=shape, method="cached", noise=noise)
    assert naive.shape == (2, c, *shape) and naive.dtype == torch.int64
    assert torch.equal(naive, cached)
    assert 0 <= int(cached.min()) and int(cached.max()) < model.num_classes
    assert len(torch.unique(cached)) > 1  # not a degenerate constant image


def test_warpers_and_batch_one_identical():
    model = pixelcnn(3, hidden=6, blocks=1)
    noise = draw_noise(model, 1, (5, 4), seed=0)
    kw = {"temperature": 0.7, "top_k": 4, "top_p": 0.9}
    naive = sample_image(model, 1, shape=(5, 4), method="naive", noise=noise, **kw)
    cached = sample_image(model, 1, shape=(5, 4), method="cached", noise=noise, **kw)
    assert torch.equal(naive, cached)


def test_noise_generator_seed_and_callback():
    model = pixelcnn(1, blocks=1)
    a = sample_image(model, 2, shape=(4, 5), generator=torch.Generator().manual_seed(7))
    b = sample_image(model, 2, shape=(4, 5), seed=7)
    c = sample_image(model, 2, shape=(4, 5), noise=draw_noise(model, 2, (4, 5), seed=7))
    assert torch.equal(a, b) and torch.equal(a, c)
    seen = []
    sample_image(model, 1, shape=(3, 2), seed=0, callback=lambda i, j, img: seen.append((i, j, img.shape)))
    assert seen == [(i, j, (1, 1, 3, 2)) for i in range(3) for j in range(2)]
    # the sampler leaves the model in the mode it found it
    model.train()
    sample_image(model, 1, shape=(2, 2), seed=0)
    assert model.training


def test_causality_of_the_model():
    model = pixelcnn(3, hidden=24, blocks=1)
    xf = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    out = model.output_map(xf)
    k = model.num_classes
    i, j = 2, 3
    for g in range(3):
        (grad,) = torch.autograd.grad(out[0, g * k:(g + 1) * k, i, j].sum(), xf, retain_graph=True)
        assert torch.all(grad[0, :, i + 1:] == 0) and torch.all(grad[0, :, i, j + 1:] == 0)
        assert torch.all(grad[0, g:, i, j] == 0), f"group {g} sees channels >= {g} of its own pixel"
        if g:
            assert torch.any(grad[0, :g, i, j] != 0)


def test_log_prob_and_training_step():
    model = pixelcnn(1, torch.float32, k=4, hidden=8).train()
    x = torch.randint(0, 4, (4, 1, 6, 6))
    bpd = model.bits_per_dim(x)
    assert bpd.shape == (4,) and torch.all(bpd > 0)
    assert_close(model.log_prob(x), -bpd * 36 * math.log(2.0), name="log_prob vs bits/dim", scale=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = bpd.mean()
    before.backward()
    opt.step()
    assert model.bits_per_dim(x).mean() < before


def test_bad_input_errors():
    model = pixelcnn(1, blocks=1)
    with pytest.raises(ValueError, match="noise must have shape"):
        sample_image(model, 2, shape=(4, 4), noise=torch.rand(2, 1, 4, 5))
    with pytest.raises(ValueError, match="noise must be floating"):
        sample_image(model, 1, shape=(2, 2), noise=torch.zeros(1, 1, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="method"):
        sample_image(model, 1, shape=(2, 2), method="fast")
    with pytest.raises(ValueError, match="shape"):
        sample_image(model, 1, shape=(4,))
    with pytest.raises(ValueError, match="batch_size"):
        sample_image(model, 0, shape=(2, 2))
    with pytest.raises(ValueError, match="unconditional"):
        sample_image(model, 1, shape=(2, 2), condition=torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="levels"):
        model(torch.full((1, 1, 3, 3), 7))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.zeros(1, 3, 3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="hidden_channels"):
        PixelCNN(image_channels=3, hidden_channels=8)


# ------------------------------------------------------------------------------------ distributions


def test_categorical_inverse_cdf_frequencies():
    logits = torch.randn(5, 6, dtype=torch.float64)
    grid = (torch.arange(10000, dtype=torch.float64) + 0.5) / 10000
    draws = sample_categorical(logits[:, None, :].expand(5, 10000, 6), grid.expand(5, 10000))
    freq = torch.stack([(draws == k).double().mean(1) for k in range(6)], dim=1)
    assert_close(freq, torch.softmax(logits, -1), name="frequencies", scale=2e6)
    assert torch.all(draws[:, 1:] >= draws[:, :-1])  # monotone in u


def test_categorical_warpers():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]], dtype=torch.float64).expand(1000, 4)
    u = torch.linspace(0, 0.9999, 1000, dtype=torch.float64)
    assert set(sample_categorical(logits, u, top_k=2).tolist()) == {1, 3}
    p = torch.softmax(logits[0], -1)
    kept = set(sample_categorical(logits, u, top_p=float(p[1] + 1e-9)).tolist())
    assert kept == {1, 3}  # class 1 alone has mass < top_p+, so the next one is kept too
    assert set(sample_categorical(logits, u, top_p=float(p[1] - 1e-9)).tolist()) == {1}
    assert set(sample_categorical(logits, u, temperature=1e-3).tolist()) == {1}
    with pytest.raises(ValueError, match="must have shape"):
        sample_categorical(logits, u[:10])
    with pytest.raises(ValueError, match="temperature"):
        sample_categorical(logits, u, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        sample_categorical(logits, u, top_p=1.5)


def test_bernoulli():
    logits = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    grid = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    draws = sample_bernoulli(logits[:, None].expand(3, 1000), grid.expand(3, 1000))
    assert_close(draws.double().mean(1), torch.sigmoid(logits), name="P(1)", scale=1e7)
    with pytest.raises(ValueError, match="uniforms"):
        sample_bernoulli(logits, grid)


@pytest.mark.parametrize("c", [1, 3])
def test_discretized_logistic_mixture_normalised_and_sampled(c):
    m, bins = 3, (16 if c == 1 else 4)
    params = torch.randn(1, mixture_params_size(c, m), 1, 1, dtype=torch.float64)
    levels = torch.cartesian_prod(*[torch.arange(bins)] * c).reshape(-1, c)  # every pixel value
    x = dequantize(levels, bins, torch.float64)[:, :, None, None]
    lp = discretized_logistic_mixture_log_prob(x, params.expand(len(levels), -1, 1, 1), num_mixtures=m, bins=bins)
    assert abs(float(torch.logsumexp(lp.flatten(), 0))) < 1e-9  # sums to one over all values
    u = torch.rand(4000, 1 + c, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = sample_discretized_logistic_mixture(params[:, :, 0, 0].expand(4000, -1), u, channels=c, num_mixtures=m,
                                            bins=bins)
    assert s.shape == (4000, c) and float(s.abs().max()) <= 1.0
    q = quantize(s, bins)
    idx = (q * (bins ** torch.arange(c - 1, -1, -1))).sum(1)  # same order as cartesian_prod
    freq = torch.bincount(idx, minlength=bins ** c).double() / 4000
    tv = 0.5 * (freq - lp.flatten().exp()).abs().sum()
    assert tv < 0.12, f"sampled histogram far from the mixture pmf (total variation {tv:.3f})"
    assert_close(bits_per_dim(lp[:2], 1), -lp[:2].flatten() / math.log(2.0), name="bits/dim")


def test_benchmark_eager_baseline_samples_the_same_images():
    from arkern.bench.pixelcnn import eager_cached_sample

    model = pixelcnn(3, torch.float64, hidden=6, blocks=1)
    noise = draw_noise(model, 2, (5, 6), seed=4)
    assert torch.equal(eager_cached_sample(model, noise), sample_image(model, 2, shape=(5, 6), noise=noise))


# ------------------------------------------------------------------------------------------ PixelCNN++


@pytest.mark.parametrize("c", [3])
def test_pixelcnnpp_naive_samples_are_self_consistent(c):
    # every sampled pixel is what the model's distribution at that pixel, evaluated on the final image,
    # gives for the same uniforms (causal model: later pixels must not change earlier parameters)
    model = pixelcnnpp(c, torch.float64)
    noise = draw_noise(model, 2, (8, 4), seed=1)
    img = sample_image(model, 2, shape=(8, 4), method="naive", noise=noise)
    assert img.shape == (2, c, 8, 4) and 0 <= int(img.min()) and int(img.max()) < 256
    assert torch.equal(img, sample_image(model, 2, shape=(8, 4), method="naive", noise=noise))
    with torch.no_grad():
        out = model(img)
    flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    _, levels = model.draw(flat(out), flat(noise), 0)
    assert torch.equal(levels, flat(img))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c,n,h,w", [(3, 1, 8, 12), (1, 2, 4, 4), (3, 2, 12, 8)])
def test_pixelcnnpp_teacher_forced_cached_equals_forward(dtype, c, n, h, w):
    model = pixelcnnpp(c, dtype)
    x = torch.randint(0, 256, (n, c, h, w))
    with torch.no_grad():
        expected = model.output_map(model.prepare(x))
    assert_close(teacher_forced_outputs(model, x, fill=9.0), expected, name="cached mixture params", dtype=dtype)


@pytest.mark.parametrize("c,shape,dtype", [(3, (8, 8), torch.float32), (1, (12, 8), torch.float64)])
def test_pixelcnnpp_naive_and_cached_samples_identical(c, shape, dtype):
    model = pixelcnnpp(c, dtype)
    noise = draw_noise(model, 2, shape, seed=6)
    naive = sample_image(model, 2, shape=shape, method="naive", noise=noise)
    cached = sample_image(model, 2, shape=shape, method="cached", noise=noise)
    assert torch.equal(naive, cached)
    assert len(torch.unique(cached)) > 10


def test_pixelcnnpp_strided_layers_run_only_where_they_produce_new_outputs():
    model = pixelcnnpp(3, torch.float64)
    dec = PixelCNNppDecoder(model)
    counts: dict[str, int] = {}

    def count(obj, method, key):
        original = getattr(obj, method)

        def counted(*args):
            counts[key] = counts.get(key, 0) + 1
            return original(*args)
        setattr(obj, method, counted)

    count(dec.down_ul[0], "pixel", "ul level 1")
    count(dec.down_ul[1], "pixel", "ul level 2")
    count(dec.down_u[0], "row", "u level 1")
    count(dec.down_u[1], "row", "u level 2")
    count(dec.up_u[0][0], "step_row", "u level 0 rows")
    with torch.no_grad():
        sample_raster(model, draw_noise(model, 1, (8, 12), seed=0), decoder=dec)
    assert counts == {"ul level 1": 4 * 6, "ul level 2": 2 * 3, "u level 1": 4, "u level 2": 2,
                      "u level 0 rows": 8}


def test_pixelcnnpp_causality_through_both_samplings():
    model = pixelcnnpp(3, torch.float64)
    xf = torch.randn(1, 3, 8, 12, dtype=torch.float64, requires_grad=True)
    out = model.output_map(xf)
    for i, j in [(5, 6), (0, 3), (7, 11), (4, 0)]:
        (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), xf, retain_graph=True)
        assert torch.all(grad[0, :, i + 1:] == 0) and torch.all(grad[0, :, i, j:] == 0), (i, j)
        if (i, j) != (0, 0):
            assert torch.any(grad[0] != 0)


def test_pixelcnnpp_log_likelihood_and_training_step():
    model = pixelcnnpp(3, torch.float32).train()
    x = torch.randint(0, 256, (2, 3, 4, 4))
    out = model(x)
    assert out.shape == (2, 20, 4, 4)
    bpd = model.bits_per_dim(x)
    assert bpd.shape == (2,) and torch.all(bpd > 0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    bpd.mean().backward()
    opt.step()
    assert model.bits_per_dim(x).mean() < bpd.mean()


def test_pixelcnnpp_bad_input():
    model = pixelcnnpp(3, torch.float64)
    with pytest.raises(ValueError, match="multiples of 4"):
        sample_image(model, 1, shape=(6, 8), method="naive")
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.zeros(1, 3, 8, 10, dtype=torch.int64))
    with pytest.raises(ValueError, match="noise must have shape"):
        sample_image(model, 1, shape=(4, 4), method="naive", noise=torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="multiples of 4"):
        sample_image(model, 1, shape=(8, 2), method="cached")
    with pytest.raises(ValueError, match="multiples of 4"):
        PixelCNNppDecoder(model).reset(1, 12, 6)
    with pytest.raises(ValueError, match="top_k"):
        sample_image(model, 1, shape=(4, 4), method="naive", top_k=3)
    with pytest.raises(ValueError, match="levels"):
        model(torch.full((1, 3, 4, 4), 256))


def test_plain_blocks_and_input_range():
    """residual=False (ReLU, kxk conv blocks) on inputs in [0, 1]: cached == forward, naive == cached."""
    model = image_model("plain", 3, torch.float64)
    assert model.prepare(torch.tensor([0, 3, 6])).tolist() == [0.0, 0.5, 1.0]
    x = torch.randint(0, model.num_classes, (2, 3, 5, 6))
    with torch.no_grad():
        expected = model.output_map(model.prepare(x))
    assert_close(teacher_forced_outputs(model, x), expected, name="cached logits", dtype=torch.float64)
    noise = draw_noise(model, 2, (4, 5), seed=2)
    naive = sample_image(model, 2, shape=(4, 5), method="naive", noise=noise)
    assert torch.equal(naive, sample_image(model, 2, shape=(4, 5), method="cached", noise=noise))
    with pytest.raises(ValueError, match="input_range must be two finite numbers lo < hi"):
        PixelCNN(input_range=(1.0, 0.0))
