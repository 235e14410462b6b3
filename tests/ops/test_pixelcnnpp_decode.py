"""The fused PixelCNN++ sampler (csrc/cpu/pixelcnnpp_decode.cpp) against the model: teacher-forced mixture
parameters equal the full forward, and naive, cached and fused sampling return identical images from the
same noise; grouping of batch rows over threads, the op's checks, and bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import arkern
from arkern.backends import cpu_isas, last_cpu_isa, set_cpu_isa
from arkern.families import draw_noise, family_of
from arkern.models.pixelcnnpp_packing import pack_pixelcnnpp, pixelcnnpp_fused_reasons
from arkern.ops.pixelcnnpp_decode import BACKENDS, pixelcnnpp_generate
from arkern.sampling import available_methods, sample_image, teacher_forced_outputs
from arkern.testing import assert_close, tolerances
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
    args = (list(packed.layout), list(packed.weights), list(packed.biases), image, noise, 1.0, True, None, [])
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
    with pytest.raises(ValueError, match="float32 or bfloat16 weights"):
        sample_image(model, 1, shape=(8, 8), method="fused", weight_dtype=torch.float16)
    with pytest.raises(TypeError, match="weight_dtype must be torch.float32 or torch.bfloat16"):
        pack_pixelcnnpp(model, torch.float16)
    mixed = replace(packed, weights=(packed.weights[0].bfloat16(), *packed.weights[1:]))
    with pytest.raises(TypeError, match="all float32 or all bfloat16"):
        pixelcnnpp_generate(mixed, image, noise)
    with pytest.raises(RuntimeError, match="all float32 or all bfloat16"):  # the C++ check behind the Python one
        torch.ops.arkern.pixelcnnpp_generate(list(packed.layout), list(mixed.weights), list(packed.biases), image,
                                             noise, 1.0, False, None, [])
    bf16 = pack_pixelcnnpp(model, torch.bfloat16)
    with pytest.raises(RuntimeError, match="tiles"):  # AMX copies that do not match the weights
        torch.ops.arkern.pixelcnnpp_generate(list(bf16.layout), list(bf16.weights), list(bf16.biases), image,
                                             noise, 1.0, False, None, [w[:-1] for w in bf16.weights])
    double = pixelcnnpp(c=3, filters=5, seed=0, scale=2.0).double()
    assert any("float32" in r for r in pixelcnnpp_fused_reasons(double))
    with pytest.raises(ValueError, match="cannot sample this model"):
        sample_image(double, 1, shape=(8, 8), method="fused")
    with pytest.raises(RuntimeError, match="packed weight"):  # the C++ check behind the Python one
        torch.ops.arkern.pixelcnnpp_generate(list(packed.layout), list(packed.weights[:-1]),
                                             list(packed.biases[:-1]), image, noise, 1.0, False, None, [])


# ---------------------------------------------------------------- the bfloat16 precision

def _levels() -> list:
    return [pytest.param(name, marks=[pytest.mark.skip(reason=f"{name}: {why}")] if why else [], id=name)
            for name, why in cpu_isas().items()]


def _assert_bf16_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Two computations of the bfloat16 precision that differ only in the order of their float32 sums. A value
    whose sum falls the other side of a bfloat16 rounding boundary in one of them moves everything downstream by
    about a bfloat16 step, and in PixelCNN++ a flip in the `ul` stream reaches every later pixel below and to
    its right (a flip in the output conv's input moves a pixel by more). So: at least half of the parameters
    within float32 tolerances (a rounding point missed or added would move nearly all of them) and 99% within
    bfloat16 tolerances."""
    a, e = actual.double(), expected.double()
    for dtype, need in ((torch.float32, 0.5), (torch.bfloat16, 0.99)):
        rtol, atol = tolerances(dtype)
        close = ((a - e).abs() <= atol + rtol * e.abs()).double().mean().item()
        assert close >= need, f"{name}: only {close:.4f} within {dtype} tolerances, at least {need} expected"


def _bf16_runs(model, n: int, shape: tuple[int, int], seed: int, *, draw: bool) -> dict:
    """Teacher-forced parameters (and, `draw`, images drawn from the same noise) of the bfloat16 pack, kernel
    ("cpu") and reference."""
    packed = pack_pixelcnnpp(model, torch.bfloat16)
    assert all(w.dtype == torch.bfloat16 for w in packed.weights)
    assert bool(packed.tiles) == (cpu_isas()["amx"] is None)  # the AMX copy where the CPU has AMX
    noise = draw_noise(model, n, shape, seed=seed)
    forced = sample_image(model, n, shape=shape, method="cached", noise=noise)
    out = {}
    for b in ("cpu", "reference"):
        params = pixelcnnpp_generate(packed, torch.zeros_like(forced), noise, return_params=True, forced=forced,
                                     backend=b)
        image = torch.zeros_like(forced)
        if draw:
            pixelcnnpp_generate(packed, image, noise, backend=b)
        out[b] = (params, image)
    return out


# (c, filters, resnets, batch, (H, W), draw): 40 filters give tiles of 48, 64 and 16 outputs; 5 and 17 rows:
# the float32 tile kernels' groups of 4 with a remainder, AMX tiles padded to 16 / a full tile and a partial
# one (batches of 4 or more run on AMX tiles at the amx level); 19 and 21 filters: odd channel counts, every
# matrix's inputs padded within its tiles. `draw`: also the same samples (small models: few rounded values,
# so no flip changes a draw with these seeds; larger ones can see a draw change by a flip, see
# _assert_bf16_close).
BF16_CASES = [(3, 40, 1, 1, (8, 8), False), (1, 8, 2, 5, (4, 8), True), (3, 19, 1, 5, (8, 4), False),
              (3, 8, 0, 17, (4, 4), True), (3, 8, 1, 2, (8, 8), True), (1, 21, 1, 6, (4, 8), False)]


@pytest.mark.parametrize("isa", _levels())
@pytest.mark.parametrize("c,filters,resnets,n,shape,draw", BF16_CASES)
def test_bf16_kernel_equals_reference_at_every_level(isa, c, filters, resnets, n, shape, draw):
    """The bfloat16 precision (docs/design.md): the kernel rounds the same matrix inputs as the reference, so
    its mixture parameters equal the reference's up to float32 rounding of the sums' order (and its
    consequences, _assert_bf16_close), and it draws the reference's samples."""
    model = pixelcnnpp(c=c, filters=filters, resnets=resnets, mixtures=3, seed=filters + n, scale=2.0)
    set_cpu_isa(isa)
    try:
        out = _bf16_runs(model, n, shape, seed=n, draw=draw)
        ran = last_cpu_isa("pixelcnnpp_generate")
    finally:
        set_cpu_isa(None)
    tiles = isa == "amx" and n >= 4
    assert ran == ("amx" if tiles else "avx2" if isa == "avx2" else "avx512")
    _assert_bf16_close(out["cpu"][0], out["reference"][0], name=f"bf16 mixture params at {isa}")
    if draw:
        assert torch.equal(out["cpu"][1], out["reference"][1])
        assert len(torch.unique(out["cpu"][1])) > 5


def test_bf16_threads_and_generate():
    """bfloat16: one thread and two give the same images (row groups in parallel, or the output tiles of one
    group's products split over the team: each output is summed in the same order), and
    ``arkern.generate(..., weight_dtype=torch.bfloat16)`` runs it; the bfloat16 parameters are close to the
    float32 model's (bfloat16 tolerances, 95%)."""
    model = pixelcnnpp(c=3, filters=72, resnets=1, mixtures=2, seed=4, scale=2.0)  # 72: two output tiles
    noise = draw_noise(model, 5, (4, 8), seed=2)
    old = torch.get_num_threads()
    runs = {}
    try:
        for threads, n in ((1, 5), (2, 5), (1, 1), (2, 1)):
            torch.set_num_threads(threads)
            runs[threads, n] = sample_image(model, n, shape=(4, 8), method="fused", noise=noise[:n],
                                            weight_dtype=torch.bfloat16)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(runs[1, 5], runs[2, 5])
    assert torch.equal(runs[1, 1], runs[2, 1])
    gen = arkern.generate(model, 5, shape=(4, 8), method="fused", noise=noise, weight_dtype=torch.bfloat16)
    assert torch.equal(gen, runs[1, 5])
    x = runs[1, 5]
    params = pixelcnnpp_generate(pack_pixelcnnpp(model, torch.bfloat16), torch.zeros_like(x),
                                 torch.zeros(5, 4, 4, 8, dtype=torch.float64), return_params=True, forced=x)
    with torch.no_grad():
        expected = model(x).permute(0, 2, 3, 1)
    rtol, atol = tolerances(torch.bfloat16)
    close = ((params - expected).abs() <= atol + rtol * expected.abs()).double().mean().item()
    assert close >= 0.95, f"bf16 vs float32 parameters: only {close:.3f} within bfloat16 tolerances"


def test_bf16_tiles_read_rings_in_place():
    """On AMX tiles a row pass reads the conv windows of 16 consecutive columns of one batch row where the ring
    holds them, and copies the other tiles' windows (csrc/cpu/pixelcnnpp_decode.h: Conv::rows_at): with 32
    filters every conv's kernel rows are whole 32-input blocks; 24 columns put tiles across two batch rows, and
    the coarse scales' 12 and 6 columns copy every tile. A row's results depend only on its own inputs: rows 1-4
    of a batch of 5 (their tiles cut 8 columns further on) equal a batch of those 4 bit for bit, two threads (two
    groups) equal one, and the kernel equals the reference (_assert_bf16_close)."""
    if cpu_isas()["amx"] is not None:
        pytest.skip(f"amx: {cpu_isas()['amx']}")
    model = pixelcnnpp(c=3, filters=32, resnets=1, mixtures=2, seed=9, scale=0.5)  # 0.5: few bfloat16 flips
    shape = (4, 24)
    noise = draw_noise(model, 5, shape, seed=5)
    packed = pack_pixelcnnpp(model, torch.bfloat16)
    forced = sample_image(model, 5, shape=shape, method="cached", noise=noise)
    set_cpu_isa("amx")
    try:
        five = pixelcnnpp_generate(packed, torch.zeros_like(forced), noise, return_params=True, forced=forced)
        assert last_cpu_isa("pixelcnnpp_generate") == "amx"
        four = pixelcnnpp_generate(packed, torch.zeros_like(forced[1:]), noise[1:], return_params=True,
                                   forced=forced[1:].clone())
        old = torch.get_num_threads()
        torch.set_num_threads(2)  # two groups of rows, one per thread
        try:
            two = pixelcnnpp_generate(packed, torch.zeros_like(forced), noise, return_params=True, forced=forced)
        finally:
            torch.set_num_threads(old)
    finally:
        set_cpu_isa(None)
    assert torch.equal(five[1:], four)
    assert torch.equal(two, five)
    ref = pixelcnnpp_generate(packed, torch.zeros_like(forced), noise, return_params=True, forced=forced,
                              backend="reference")
    _assert_bf16_close(five, ref, name="bf16 mixture params, rings read in place")
