"""Fused PixelCNN / GatedPixelCNN sampling (torch.ops.arkern.pixelcnn_generate): identical images to the
cached and naive samplers from the same noise, teacher-forced logits equal to the full forward, the C++
kernel equal to the reference loop over the packed weights, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch

from arkern.families import draw_noise, family_of
from arkern.models.pixelcnnpp import PixelCNNpp
from arkern.ops.pixelcnn_decode import BACKENDS, pixelcnn_generate
from arkern.sampling import available_methods, sample_image, teacher_forced_outputs
from arkern.testing import assert_close, assert_close_rounded
from tests.conftest import image_model, kernel_backends

CPU = kernel_backends(BACKENDS)
needs_cpu = pytest.mark.skipif(not CPU or bool(CPU[0].marks), reason="the cpu pixelcnn_generate kernel is not built")


pytestmark = pytest.mark.usefixtures("one_thread")


def pack_pixelcnn(model: torch.nn.Module, weight_dtype: torch.dtype | None = None):
    """The model's packed weights for its fused op, through its family."""
    return family_of(model).pack(model, weight_dtype)


def condition_bias(model: torch.nn.Module, packed, labels: torch.Tensor | None):
    """The fused op's conditioning input for `labels` (None for an unconditional model)."""
    return family_of(model).fused_condition(model, packed, labels)


def unsupported_reasons(model: torch.nn.Module) -> list[str]:
    return family_of(model).fused_reasons(model)


def fused_supported(model: torch.nn.Module) -> bool:
    """A default (method=None) picks the fused sampler."""
    return available_methods(model)[0] == "fused"


def _labels(labels: int | None, n: int) -> torch.Tensor | None:
    return None if labels is None else torch.arange(n) % labels


CASES = [("pixelcnn", 1, None), ("pixelcnn", 3, None), ("gated", 1, None), ("gated", 3, 4), ("gated", 1, 3),
         ("plain", 3, None), ("coded", 1, 3)]


@pytest.mark.parametrize("kind,c,labels", CASES)
@pytest.mark.parametrize("n,shape", [(1, (7, 9)), (3, (8, 8))])
def test_fused_cached_naive_identical(kind, c, labels, n, shape):
    model = image_model(kind, c, torch.float64 if c == 1 else torch.float32, labels)
    cond = _labels(labels, n)
    noise = draw_noise(model, n, shape, seed=11)
    images = {m: sample_image(model, n, shape=shape, method=m, noise=noise, condition=cond)
              for m in ("naive", "cached", "fused")}
    assert images["fused"].shape == (n, c, *shape) and images["fused"].dtype == torch.int64
    assert torch.equal(images["fused"], images["cached"]) and torch.equal(images["fused"], images["naive"])
    assert len(torch.unique(images["fused"])) > 1


@pytest.mark.parametrize("kind,c,labels", CASES)
def test_fused_identical_larger_images_and_threads(kind, c, labels):
    model = image_model(kind, c, labels=labels, k=256, hidden=8 * c)
    cond = _labels(labels, 5)
    noise = draw_noise(model, 5, (16, 13), seed=2)
    cached = sample_image(model, 5, shape=(16, 13), method="cached", noise=noise, condition=cond)
    fused = sample_image(model, 5, shape=(16, 13), method="fused", noise=noise, condition=cond)
    torch.set_num_threads(2)  # batch rows split over threads: the same images
    fused2 = sample_image(model, 5, shape=(16, 13), method="fused", noise=noise, condition=cond)
    # batch 1 on two threads: PixelCNN's row pass splits the columns over the threads instead
    one = sample_image(model, 1, shape=(16, 13), method="fused", noise=noise[2:3],
                       condition=None if cond is None else cond[2:3])
    assert torch.equal(fused, cached) and torch.equal(fused2, cached) and torch.equal(one, cached[2:3])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind,c,labels", CASES)
@pytest.mark.parametrize("n,h,w", [(1, 5, 7), (3, 8, 8)])
def test_teacher_forced_fused_equals_forward(dtype, kind, c, labels, n, h, w):
    model = image_model(kind, c, dtype, labels)
    x = torch.randint(0, model.num_classes, (n, c, h, w))
    cond = _labels(labels, n)
    with torch.no_grad():
        expected = model.output_map(model.prepare(x), cond)
    assert_close(teacher_forced_outputs(model, x, cond, method="fused"), expected, name="fused logits", dtype=dtype)


@pytest.mark.parametrize("kind,c,labels", CASES)
def test_warpers_identical(kind, c, labels):
    model = image_model(kind, c, labels=labels, k=16)
    cond = _labels(labels, 2)
    noise = draw_noise(model, 2, (5, 6), seed=4)
    for kw in ({"temperature": 0.6}, {"top_k": 3}, {"top_p": 0.7}, {"temperature": 1.3, "top_k": 5, "top_p": 0.9}):
        cached = sample_image(model, 2, shape=(5, 6), method="cached", noise=noise, condition=cond, **kw)
        fused = sample_image(model, 2, shape=(5, 6), method="fused", noise=noise, condition=cond, **kw)
        assert torch.equal(fused, cached), kw


@needs_cpu
@pytest.mark.parametrize("kind,c,labels", CASES)
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_kernel_equals_reference_loop(kind, c, labels, weight_dtype):
    """The C++ kernel against the readable loop over the same packed tensors: logits, images, caches,
    with the rows split over several calls (the caches carry the state)."""
    model = image_model(kind, c, labels=labels, k=11, hidden=40 if c == 1 else 42)  # tile widths 16, 32, 48, 64
    n, h, w = 2, 6, 5
    packed = pack_pixelcnn(model, weight_dtype)
    cond = condition_bias(model, packed, _labels(labels, n))
    noise = draw_noise(model, n, (h, w), seed=9)
    out = {}
    for backend in ("cpu", "reference"):
        caches, image = packed.new_caches(n, h, w), torch.zeros(n, c, h, w, dtype=torch.int64)
        logits = [pixelcnn_generate(packed, caches, image, noise, cond=cond, row_begin=r0, row_end=r1,
                                    return_logits=True, top_p=0.95, backend=backend)
                  for r0, r1 in ((0, 2), (2, 3), (3, 6))]
        out[backend] = (image, torch.cat(logits, 1), caches)
    assert torch.equal(out["cpu"][0], out["reference"][0])
    # bfloat16: on AMX tiles the float32 sums run in another order (an intermediate may round to the other
    # bfloat16 neighbour, moving what depends on it by about a bfloat16 step)
    check = assert_close if weight_dtype == torch.float32 else assert_close_rounded
    check(out["cpu"][1], out["reference"][1], name="logits", dtype=torch.float32)
    for a, b in zip(out["cpu"][2], out["reference"][2]):
        check(a, b, name="cache", dtype=torch.float32)
    if weight_dtype == torch.bfloat16:  # bf16 weights: logits near the float32 model's
        with torch.no_grad():
            expected = model.output_map(model.prepare(out["cpu"][0]), _labels(labels, n)).permute(0, 2, 3, 1)
        assert_close(out["cpu"][1], expected, name="bf16 logits", dtype=torch.bfloat16)


def test_callback_progress_and_bf16_option():
    model = image_model("gated", 3, labels=2)
    cond = torch.tensor([1])
    seen = []
    img = sample_image(model, 1, shape=(3, 4), method="fused", seed=0, condition=cond, progress=True,
                       callback=lambda i, j, image: seen.append((i, j, bool((image[:, :, i] >= 0).all()))))
    assert seen == [(i, j, True) for i in range(3) for j in range(4)]
    assert torch.equal(img, sample_image(model, 1, shape=(3, 4), method="cached", seed=0, condition=cond))
    bf16 = sample_image(model, 1, shape=(3, 4), method="fused", seed=0, condition=cond, weight_dtype=torch.bfloat16)
    assert bf16.shape == img.shape and 0 <= int(bf16.min()) and int(bf16.max()) < model.num_classes
    assert pack_pixelcnn(model) is pack_pixelcnn(model)  # cached per model ...
    old = pack_pixelcnn(model)
    with torch.no_grad():
        model.head[1].bias.add_(1.0)
    assert pack_pixelcnn(model) is not old  # ... and re-packed when a weight changes


def test_op_validation_and_unsupported_models():
    model = image_model("pixelcnn", 1)
    with pytest.raises(ValueError, match="noise must have shape"):
        sample_image(model, 2, shape=(4, 4), method="fused", noise=torch.rand(2, 1, 4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight_dtype"):
        sample_image(model, 1, shape=(2, 2), method="cached", weight_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="cannot sample this model.*float32 parameters"):  # PixelCNN++: float32 only
        sample_image(PixelCNNpp(filters=8, num_resnets=1, num_mixtures=2).double(), 1, shape=(4, 4), method="fused")
    odd = image_model("pixelcnn", 1)
    odd.net.insert(1, torch.nn.Tanh())
    assert not fused_supported(odd) and not unsupported_reasons(model)
    assert fused_supported(model) == (not CPU[0].marks)  # a default picks fused only with the kernel built
    with pytest.raises(ValueError, match=r"net\[1\] is not a residual block"):
        sample_image(odd, 1, shape=(2, 2), method="fused")
    half = image_model("gated", 1).to(torch.bfloat16)
    assert any("float32 or all float64" in r for r in unsupported_reasons(half))
    with pytest.raises(TypeError, match="weight_dtype"):
        pack_pixelcnn(image_model("pixelcnn", 1, torch.float64), torch.bfloat16)
    packed = pack_pixelcnn(model)
    caches, image = packed.new_caches(1, 3, 4), torch.zeros(1, 1, 3, 4, dtype=torch.int64)
    noise = torch.rand(1, 1, 3, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        pixelcnn_generate(packed, caches, image, noise.float())
    with pytest.raises(ValueError, match=r"caches\[1\]"):
        pixelcnn_generate(packed, [caches[0], caches[1][:, :, :-1].contiguous()] + caches[2:], image, noise)
    with pytest.raises(ValueError, match="rows"):
        pixelcnn_generate(packed, caches, image, noise, row_begin=2, row_end=5)
    with pytest.raises(ValueError, match="forced holds levels"):
        pixelcnn_generate(packed, caches, image, noise, forced=torch.full_like(image, 7))


@needs_cpu
def test_kernel_validates_before_running_and_opcheck():
    model = image_model("gated", 3, labels=2)
    packed = pack_pixelcnn(model)
    caches, image = packed.new_caches(2, 3, 4), torch.zeros(2, 3, 3, 4, dtype=torch.int64)
    noise = torch.rand(2, 3, 3, 4, dtype=torch.float64)
    cond = condition_bias(model, packed, torch.tensor([0, 1]))
    op = torch.ops.arkern.pixelcnn_generate.default
    args = [list(packed.layout), packed.weights, packed.biases, packed.input_table, caches, image, noise, cond, 0, 3,
            1.0, 0, 1.0, True, None, []]
    bad = {1: packed.weights[:-1], 2: [b[:-1] for b in packed.biases], 3: packed.input_table[:-1], 4: caches[:-1],
           7: cond[:, :1], 9: 4, 5: image[:, :2].contiguous(), 6: noise.float(), 0: list(packed.layout)[:9],
           15: [w.bfloat16() for w in packed.weights]}
    for index, value in bad.items():
        with pytest.raises(RuntimeError, match="pixelcnn_generate"):
            op(*[value if k == index else a for k, a in enumerate(args)])
    assert int(image.abs().sum()) == 0  # nothing ran
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_eager_baselines_sample_the_same_images():
    """The plain-PyTorch cached samplers the benchmarks compare against are correct samplers too."""
    from arkern.bench.pixelcnn import eager_cached_sample, eager_cached_sample_gated

    gated, cond = image_model("gated", 3, labels=3), torch.tensor([0, 2])
    noise = draw_noise(gated, 2, (4, 5), seed=6)
    assert torch.equal(eager_cached_sample_gated(gated, noise, cond),
                       sample_image(gated, 2, shape=(4, 5), method="fused", noise=noise, condition=cond))
    plain = image_model("pixelcnn", 3)
    noise = draw_noise(plain, 2, (4, 5), seed=6)
    assert torch.equal(eager_cached_sample(plain, noise), sample_image(plain, 2, shape=(4, 5), method="fused",
                                                                       noise=noise))
