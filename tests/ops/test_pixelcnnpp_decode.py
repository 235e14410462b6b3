"""The fused PixelCNN++ sampler (csrc/cpu/pixelcnnpp_decode.cpp) against the model: teacher-forced mixture
parameters equal the full forward, and naive, cached and fused sampling return identical images from the
same noise; grouping of batch rows over threads, the op's checks, and bad input."""

from __future__ import annotations

import pytest
import torch

import arkern
from arkern.backends import cpu_isas, set_cpu_isa
from arkern.families import draw_noise, family_of
from arkern.models.pixelcnnpp_packing import pack_pixelcnnpp, pixelcnnpp_fused_reasons
from arkern.ops.pixelcnnpp_decode import BACKENDS, pixelcnnpp_generate
from arkern.sampling import available_methods, sample_image, teacher_forced_outputs
from arkern.testing import assert_close
from tests.conftest import pixelcnnpp

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(bool(BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.float32)),
                       reason="the pixelcnnpp_generate C++ kernel is not built"),
]


CONFIGS = {
    # name: (model kwargs, batch, (H, W))
    "rgb": (dict(c=3, filters=8, resnets=1, mixtures=3), 2, (8, 12)),
    "grey-deep": (dict(c=1, filters=16, resnets=2, mixtures=2), 1, (4, 8)),
    "odd-filters": (dict(c=3, filters=5, resnets=0, mixtures=1), 3, (8, 8)),
    "wide": (dict(c=3, filters=20, resnets=1, mixtures=5), 2, (12, 8)),
    # taller than wide and the reverse: every ring of cached rows wraps several times at every scale
    "tall": (dict(c=3, filters=8, resnets=2, mixtures=2), 1, (20, 8)),
    "flat": (dict(c=1, filters=8, resnets=1, mixtures=2), 3, (8, 20)),
    "square-20": (dict(c=3, filters=6, resnets=1, mixtures=2), 2, (20, 20)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_teacher_forced_params_equal_forward(name):
    kwargs, n, (h, w) = CONFIGS[name]
    model = pixelcnnpp(**kwargs, scale=2.0)
    x = torch.randint(0, 256, (n, model.image_channels, h, w))
    with torch.no_grad():
        expected = model(x)
    assert_close(teacher_forced_outputs(model, x, method="fused"), expected, name="fused mixture params",
                 dtype=torch.float32)


@pytest.mark.parametrize("c,batch,shape,temperature", [(3, 1, (8, 8), 1.0), (3, 2, (16, 16), 1.0),
                                                        (1, 2, (8, 12), 0.8), (3, 1, (12, 16), 1.3)])
def test_naive_cached_fused_identical(c, batch, shape, temperature):
    model = pixelcnnpp(c=c, filters=8, resnets=1, mixtures=3, seed=c, scale=2.0)
    noise = draw_noise(model, batch, shape, seed=7)
    runs = {m: sample_image(model, batch, shape=shape, method=m, noise=noise, temperature=temperature)
            for m in ("naive", "cached", "fused")}
    assert torch.equal(runs["naive"], runs["cached"])
    assert torch.equal(runs["cached"], runs["fused"])
    assert len(torch.unique(runs["fused"])) > 5


@pytest.mark.parametrize("batch,shape", [(1, (12, 12)), (1, (20, 20)), (1, (20, 12)), (2, (12, 20)), (1, (4, 4))])
def test_row_rings_wrap_identical(batch, shape):
    """The kernel keeps only the last rows of every layer's input (rings of 2 rows, one row of each coarse
    scale's final values): images of several heights, so each ring wraps many times, equal the naive and
    cached samplers' pixel for pixel."""
    model = pixelcnnpp(c=3, filters=6, resnets=1, mixtures=2, seed=shape[0] + batch, scale=2.0)
    noise = draw_noise(model, batch, shape, seed=11)
    fused = sample_image(model, batch, shape=shape, method="fused", noise=noise)
    assert torch.equal(fused, sample_image(model, batch, shape=shape, method="cached", noise=noise))
    if shape[0] * shape[1] <= 256:  # naive: one full forward per pixel
        assert torch.equal(fused, sample_image(model, batch, shape=shape, method="naive", noise=noise))
    assert len(torch.unique(fused)) > 5


def test_row_groups_and_threads_identical():
    # five rows: one group of five with one thread, groups of two and three with two threads
    model = pixelcnnpp(c=3, filters=8, resnets=1, mixtures=2, seed=4, scale=2.0)
    noise = draw_noise(model, 5, (8, 8), seed=1)
    one = sample_image(model, 5, shape=(8, 8), method="fused", noise=noise)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = sample_image(model, 5, shape=(8, 8), method="fused", noise=noise)
    finally:
        torch.set_num_threads(old)
    single = sample_image(model, 1, shape=(8, 8), method="fused", noise=noise[3:4])
    assert torch.equal(one, two)
    assert torch.equal(one[3:4], single)


@pytest.mark.parametrize("isa", [pytest.param(name, marks=[pytest.mark.skip(reason=f"{name}: {why}")] if why else [],
                                              id=name) for name, why in cpu_isas().items() if name != "amx"])
def test_batch_one_at_every_isa_level(isa):
    """At batch 1 the per-pixel products (csrc/cpu/pixelcnnpp_decode.h: split_product) run on one row, on the
    AVX-512 tile kernel or the portable one at avx2; 40 filters give tiles of 48, 64 and 16 outputs. At every
    level the teacher-forced parameters equal the forward and the samples equal the cached sampler's."""
    model = pixelcnnpp(c=3, filters=40, resnets=1, mixtures=2, seed=2, scale=2.0)
    noise = draw_noise(model, 1, (8, 8), seed=3)
    x = torch.randint(0, 256, (1, 3, 8, 8))
    with torch.no_grad():
        expected = model(x)
    cached = sample_image(model, 1, shape=(8, 8), method="cached", noise=noise)
    set_cpu_isa(isa)
    try:
        params = teacher_forced_outputs(model, x, method="fused")
        fused = sample_image(model, 1, shape=(8, 8), method="fused", noise=noise)
    finally:
        set_cpu_isa(None)
    assert_close(params, expected, name=f"fused mixture params at {isa}", dtype=torch.float32)
    assert torch.equal(fused, cached)
    assert len(torch.unique(fused)) > 5


def test_default_method_and_callback():
    model = pixelcnnpp(c=1, filters=8, resnets=1, mixtures=2, seed=0, scale=2.0)
    assert not family_of(model).method_reasons(model)
    assert available_methods(model)[0] == "fused"
    seen = []
    img = arkern.generate(model, 2, shape=(4, 8), seed=3, callback=lambda rows, i: seen.append(i))
    ref = sample_image(model, 2, shape=(4, 8), method="cached", noise=draw_noise(model, 2, (4, 8), seed=3))
    assert torch.equal(img, ref)
    assert seen == [0, 1, 2, 3]  # one call per finished image row


@pytest.mark.parametrize("c", [1, 3])
def test_kernel_equals_reference(c):
    """The C++ kernel against the op's readable reference (the unpacked network sampled naively): the same
    mixture parameters teacher-forced, and the same images drawn from the same noise."""
    model = pixelcnnpp(c=c, filters=6, resnets=1, mixtures=3, seed=4, scale=2.0)
    packed = pack_pixelcnnpp(model)
    n, h, w = 2, 4, 8
    noise = draw_noise(model, n, (h, w), seed=5)
    forced = sample_image(model, n, shape=(h, w), method="cached", noise=noise)
    params = {b: pixelcnnpp_generate(packed, torch.zeros_like(forced), noise, return_params=True, forced=forced,
                                     backend=b) for b in ("cpu", "reference")}
    assert_close(params["cpu"], params["reference"], name="mixture params", dtype=torch.float32)
    with torch.no_grad():
        expected = model.output_map(model.prepare(forced)).permute(0, 2, 3, 1)
    assert_close(params["reference"], expected, name="reference vs model", dtype=torch.float32)
    images = {}
    for b in ("cpu", "reference"):
        images[b] = torch.zeros_like(forced)
        pixelcnnpp_generate(packed, images[b], noise, temperature=0.9, backend=b)
    assert torch.equal(images["cpu"], images["reference"])
    assert len(torch.unique(images["cpu"])) > 1


def test_opcheck():
    model = pixelcnnpp(c=3, filters=5, resnets=1, mixtures=2, seed=0, scale=2.0)
    packed = pack_pixelcnnpp(model)
    image = torch.zeros(2, 3, 4, 4, dtype=torch.int64)
    noise = torch.rand(2, 4, 4, 4, dtype=torch.float64)
    args = (list(packed.layout), list(packed.weights), list(packed.biases), image, noise, 1.0, True, None)
    torch.library.opcheck(torch.ops.arkern.pixelcnnpp_generate.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_input():
    model = pixelcnnpp(c=3, filters=5, resnets=1, mixtures=2, seed=0, scale=2.0)
    packed = pack_pixelcnnpp(model)
    image = torch.zeros(1, 3, 8, 8, dtype=torch.int64)
    noise = torch.rand(1, 4, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="multiples of 4"):
        sample_image(model, 1, shape=(6, 8), method="fused")
    with pytest.raises(ValueError, match="noise must be float64 of shape"):
        pixelcnnpp_generate(packed, image, noise[:, :3])
    with pytest.raises(ValueError, match="image must be a contiguous int64"):
        pixelcnnpp_generate(packed, image.float(), noise)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        pixelcnnpp_generate(packed, image, noise, temperature=0.0)
    with pytest.raises(ValueError, match=r"forced levels must be in \[0, 256\)"):
        pixelcnnpp_generate(packed, image, noise, forced=torch.full_like(image, 256))
    with pytest.raises(ValueError, match="top_k / top_p do not apply"):
        sample_image(model, 1, shape=(8, 8), method="fused", top_k=3)
    with pytest.raises(ValueError, match="float32 weights only"):
        sample_image(model, 1, shape=(8, 8), method="fused", weight_dtype=torch.bfloat16)
    double = pixelcnnpp(c=3, filters=5, seed=0, scale=2.0).double()
    assert any("float32" in r for r in pixelcnnpp_fused_reasons(double))
    with pytest.raises(ValueError, match="cannot sample this model"):
        sample_image(double, 1, shape=(8, 8), method="fused")
    with pytest.raises(RuntimeError, match="packed weight"):  # the C++ check behind the Python one
        torch.ops.arkern.pixelcnnpp_generate(list(packed.layout), list(packed.weights[:-1]),
                                             list(packed.biases[:-1]), image, noise, 1.0, False, None)
