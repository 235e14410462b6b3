"""GatedPixelCNN: cached decoding (vertical stack per row, horizontal per pixel) equals the full forward,
naive and cached samples identical, no blind spot, class conditioning, bad input."""

from __future__ import annotations

import pytest
import torch

from arkern.decode.image import sample_raster
from arkern.decode.pixelcnn import GatedPixelCNNDecoder
from arkern.families import draw_noise
from arkern.models.gated_pixelcnn import GatedPixelCNN
from arkern.sampling import sample_image, teacher_forced_outputs
from arkern.testing import assert_close
from tests.conftest import gated_pixelcnn, image_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("labels", [None, 5])
@pytest.mark.parametrize("n,h,w", [(1, 5, 7), (3, 8, 8)])
def test_teacher_forced_cached_equals_forward(dtype, c, labels, n, h, w):
    model = gated_pixelcnn(c, dtype, labels)
    x = torch.randint(0, model.num_classes, (n, c, h, w))
    cond = torch.arange(n) % labels if labels else None
    with torch.no_grad():
        expected = model.output_map(model.prepare(x), cond)
    assert_close(teacher_forced_outputs(model, x, cond), expected, name="cached logits", dtype=dtype)
    assert_close(teacher_forced_outputs(model, x, cond, fill=-55.0), expected, name="cached logits (fill)",
                 dtype=dtype)


@pytest.mark.parametrize("c,shape,labels", [(1, (8, 8), None), (3, (9, 8), 4), (1, (12, 11), 3)])
def test_naive_and_cached_samples_identical(c, shape, labels):
    model = gated_pixelcnn(c, torch.float64 if c == 1 else torch.float32, labels, layers=2, hidden=3 * c)
    cond = torch.tensor([0, labels - 1]) if labels else None
    noise = draw_noise(model, 2, shape, seed=5)
    naive = sample_image(model, 2, shape=shape, method="naive", noise=noise, condition=cond)
    cached = sample_image(model, 2, shape=shape, method="cached", noise=noise, condition=cond)
    assert naive.shape == (2, c, *shape)
    assert torch.equal(naive, cached)
    assert len(torch.unique(cached)) > 1


def test_vertical_stack_once_per_row_horizontal_once_per_pixel():
    model = gated_pixelcnn(3, layers=2)
    h, w = 4, 5
    calls = {"row": 0, "pixel": 0}
    dec = GatedPixelCNNDecoder(model)
    view_row, view_step = dec.v_convs[0].step_row, dec.h_convs[0].step
    dec.v_convs[0].step_row = lambda *a: (calls.__setitem__("row", calls["row"] + 1), view_row(*a))[1]
    dec.h_convs[0].step = lambda *a: (calls.__setitem__("pixel", calls["pixel"] + 1), view_step(*a))[1]
    with torch.no_grad():
        sample_raster(model, draw_noise(model, 1, (h, w), seed=0), decoder=dec)
    assert calls == {"row": h - 1, "pixel": h * w * 3}  # row 0 needs no vertical pass


def test_no_blind_spot_and_causality():
    model = gated_pixelcnn(1, layers=4, hidden=8)
    xf = torch.randn(1, 1, 7, 9, dtype=torch.float64, requires_grad=True)
    out = model.output_map(xf)
    i, j = 4, 3
    (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), xf)
    g = grad[0, 0]
    assert torch.all(g[i + 1:] == 0) and torch.all(g[i, j:] == 0), "sees the current or a later pixel"
    # the blind spot of a plain masked-conv PixelCNN is up and to the right; this model sees it
    assert g[i - 1, j + 2] != 0 and g[i - 2, j + 3] != 0 and g[i, j - 1] != 0


def test_conditioning_changes_output_and_log_prob():
    model = gated_pixelcnn(1, labels=3)
    x = torch.randint(0, 7, (2, 1, 4, 4))
    a = model(x, torch.tensor([0, 0]))
    b = model(x, torch.tensor([2, 2]))
    assert a.shape == (2, 7, 1, 4, 4) and not torch.allclose(a, b)
    lp = model.log_prob(x, torch.tensor([1, 2]))
    assert lp.shape == (2,) and torch.all(lp < 0)


def test_bad_input_errors():
    cond_model = gated_pixelcnn(1, labels=3, layers=1)
    with pytest.raises(ValueError, match=r"condition labels must be in \[0, 3\)"):
        sample_image(cond_model, 2, shape=(3, 3), condition=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"condition labels must be in \[0, 3\)"):
        cond_model(torch.zeros(1, 1, 3, 3, dtype=torch.int64), torch.tensor([-1]))
    with pytest.raises(ValueError, match="class-conditional"):
        sample_image(cond_model, 1, shape=(3, 3))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        sample_image(cond_model, 2, shape=(3, 3), condition=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        sample_image(cond_model, 1, shape=(3, 3), condition=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="unconditional"):
        sample_image(gated_pixelcnn(1, layers=1), 1, shape=(3, 3), condition=torch.tensor([0]))
    with pytest.raises(ValueError, match="noise must have shape"):
        sample_image(cond_model, 1, shape=(3, 3), condition=torch.tensor([1]), noise=torch.rand(1, 3, 3, 3))
    with pytest.raises(ValueError, match="odd kernel_size"):
        GatedPixelCNN(kernel_size=4)
    with pytest.raises(ValueError, match="hidden_channels"):
        GatedPixelCNN(image_channels=3, hidden_channels=10)


@pytest.mark.parametrize("labels", [None, 3])
def test_converter_options_cached_equals_forward_and_samples(labels):
    """Input embedding, own first kernel, shifted vertical input, wide head without leading ReLU."""
    model = image_model("coded", 1, torch.float64, labels)
    x = torch.randint(0, model.num_classes, (3, 1, 6, 7))
    cond = torch.arange(3) % labels if labels else None
    with torch.no_grad():
        expected = model.output_map(model.prepare(x), cond)
    assert_close(teacher_forced_outputs(model, x, cond), expected, name="cached logits", dtype=torch.float64)
    noise = draw_noise(model, 2, (5, 6), seed=1)
    cond = cond[:2] if labels else None
    naive = sample_image(model, 2, shape=(5, 6), method="naive", noise=noise, condition=cond)
    assert torch.equal(naive, sample_image(model, 2, shape=(5, 6), method="cached", noise=noise, condition=cond))


def test_shifted_vertical_input_is_causal_without_blind_spot():
    torch.manual_seed(0)
    model = GatedPixelCNN(1, 7, hidden_channels=8, num_layers=4, input_kernel_size=5, vertical_shift="input",
                          dtype=torch.float64)
    assert tuple(model.v_convs[0].kernel_size) == (2, 5) and tuple(model.v_convs[1].kernel_size) == (2, 3)
    xf = torch.randn(1, 1, 7, 9, dtype=torch.float64, requires_grad=True)
    i, j = 4, 3
    (grad,) = torch.autograd.grad(model.output_map(xf)[0, :, i, j].sum(), xf)
    g = grad[0, 0]
    assert torch.all(g[i + 1:] == 0) and torch.all(g[i, j:] == 0), "sees the current or a later pixel"
    assert g[i - 1, j + 2] != 0 and g[i - 2, j + 4] != 0 and g[i, j - 1] != 0


def test_option_errors():
    with pytest.raises(ValueError, match="vertical_shift must be 'link' or 'input'"):
        GatedPixelCNN(vertical_shift="up")
    with pytest.raises(ValueError, match="input_kernel_size must be odd"):
        GatedPixelCNN(input_kernel_size=1, vertical_shift="input")
    with pytest.raises(ValueError, match="input_embedding needs image_channels == 1"):
        GatedPixelCNN(image_channels=3, hidden_channels=6, input_embedding=4)
    with pytest.raises(ValueError, match="head_channels"):
        GatedPixelCNN(image_channels=3, hidden_channels=6, head_channels=7)


def test_first_layer_kernel_one_samples_with_every_method():
    """A (1, 1) first layer (mask A: nothing of its own pixel) keeps no cache; the samplers still agree."""
    torch.manual_seed(1)
    model = GatedPixelCNN(1, 5, hidden_channels=4, num_layers=2, input_kernel_size=1, num_labels=2,
                          dtype=torch.float64).eval()
    noise, cond = draw_noise(model, 2, (4, 5), seed=0), torch.tensor([0, 1])
    images = [sample_image(model, 2, shape=(4, 5), method=m, noise=noise, condition=cond)
              for m in ("naive", "cached", "fused")]
    assert torch.equal(images[0], images[1]) and torch.equal(images[0], images[2])
