"""The decode team (csrc/cpu/team.h): every fused sampler gives the same samples, logits and caches on one
thread and on two, where a step's products are split over output tiles between a persistent team of
workers (WaveNet at batch 1-4: a pipeline of the chain and the work off it). Checked with the team forced
on (ARKERN_TEAM=always) and adaptive, at batch 1 (the team's case) and larger, for sizes that are not
multiples of the 64-output tiles, and next to a competing busy process (where workers take over the chunks
of a descheduled peer). Nothing here measures time."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from arkern.decode import wavenet as dw
from arkern.distributions import draw_uniforms
from arkern.families import draw_noise, family_of
from arkern.models.pixelcnnpp_packing import pack_pixelcnnpp
from arkern.models.wavenet import pack_wavenet
from arkern.ops.pixelcnn_decode import pixelcnn_generate
from arkern.ops.pixelcnnpp_decode import pixelcnnpp_generate
from arkern.ops.wavenet_decode import BACKENDS as WAVENET_BACKENDS
from arkern.ops.wavenet_decode import wavenet_generate
from tests.conftest import image_model, kernel_backends, pixelcnnpp, wavenet

WAVENET_CPU = kernel_backends(WAVENET_BACKENDS)
pytestmark = pytest.mark.skipif(not WAVENET_CPU or bool(WAVENET_CPU[0].marks),
                                reason="the C++ decode kernels are not built")

WAVENET = {
    # 2Rp = 96: two dilated-conv tiles, the second holding tanh and sigmoid outputs; Rp + Sp = 128 with the
    # residual tile also holding skip outputs; Ap = 144: three head tiles
    "odd": dict(num_layers=5, residual_channels=40, skip_channels=70, num_classes=131, max_dilation=16),
    # Rp + Sp = 32: the skip outputs all share the residual outputs' tile
    "tiny": dict(num_layers=4, residual_channels=5, skip_channels=7, num_classes=19, max_dilation=4),
    "cond": dict(num_layers=4, residual_channels=24, skip_channels=40, num_classes=70, max_dilation=8,
                 cond_channels=3, cond_hop=4, global_channels=2),
}


@pytest.fixture(params=["always", "auto"])
def team_mode(request, monkeypatch):
    """ARKERN_TEAM: the team on for every step, or switched by the measured step rates (the default)."""
    monkeypatch.setenv("ARKERN_TEAM", request.param)
    return request.param


def at_threads(n: int, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def wavenet_run(name: str, wdtype: torch.dtype, batch: int, T: int, chunks: tuple[int, ...] = (),
                storage: str = "rows"):
    """Samples, logits and ring buffers of a fused run (in calls of `chunks` steps, else one call; rings in
    `storage`)."""
    model = wavenet(WAVENET[name], seed=3)
    cfg = model.config
    g = torch.Generator().manual_seed(5)
    local = torch.randn(batch, cfg.cond_channels, -(-T // cfg.cond_hop), generator=g) if cfg.cond_channels else None
    glob = torch.randn(batch, cfg.global_channels, generator=g) if cfg.global_channels else None
    state = dw.WaveNetState.new(model, batch, cond=local, gcond=glob, length=T, dtype=torch.float32,
                                ring_storage=storage)
    packed = pack_wavenet(model, wdtype)
    noise = draw_uniforms((batch, T), seed=9)
    ys, lgs, t = [], [], 0
    for n in chunks or (T,):
        y, lg = wavenet_generate(packed, state.rings, state.prev, t, noise[:, t:t + n], cond=state.cond,
                                 cond_hop=state.cond_hop, gbias=state.gcond, return_logits=True)
        ys.append(y)
        lgs.append(lg)
        t += n
    return torch.cat(ys, 1), torch.cat(lgs, 1), [r.clone() for r in state.rings]


def assert_same_runs(one, two):
    assert torch.equal(one[0], two[0]), "samples differ"
    assert torch.equal(one[1], two[1]), "logits differ"
    for a, b in zip(one[2], two[2]):
        assert torch.equal(a, b), "ring buffers differ"


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,batch", [("odd", 1), ("odd", 2), ("odd", 3), ("odd", 4), ("tiny", 1), ("cond", 1),
                                        ("cond", 5)])
def test_wavenet_one_and_two_threads_identical(name, batch, wdtype, team_mode):
    T = 70
    one = at_threads(1, lambda: wavenet_run(name, wdtype, batch, T))
    two = at_threads(2, lambda: wavenet_run(name, wdtype, batch, T))
    assert_same_runs(one, two)
    # calls of uneven lengths (the past taps' d-step blocks cut at call boundaries), rings in the other storage
    assert_same_runs(one, at_threads(2, lambda: wavenet_run(name, wdtype, batch, T, (1, 6, 17, 46), "slots")))
    assert len(torch.unique(one[0])) > 5


@pytest.mark.parametrize("batch", [1, 3])  # (bfloat16 at 4 rows runs on AMX tiles where there are any)
def test_wavenet_bf16_pipeline_draws_the_references_samples(batch, team_mode):
    """Batch 1-4 on two threads run as a pipeline (Pipe in wavenet_decode_pipe.h); in the bfloat16 precision it
    rounds every matrix input as the reference does, so it draws the reference's samples."""
    model = wavenet(WAVENET["odd"], seed=4)
    T = 60
    noise = draw_uniforms((batch, T), seed=2)
    packed = pack_wavenet(model, torch.bfloat16)

    def draw(backend: str) -> torch.Tensor:
        state = dw.WaveNetState.new(model, batch, length=T, dtype=torch.float32)
        return wavenet_generate(packed, state.rings, state.prev, 0, noise, backend=backend)[0]

    samples = {backend: at_threads(2, lambda b=backend: draw(b)) for backend in ("reference", "cpu")}
    assert torch.equal(samples["cpu"], samples["reference"])
    assert len(torch.unique(samples["cpu"])) > 5


def pixelcnn_run(kind: str, c: int, labels: int | None, wdtype: torch.dtype, n: int, shape: tuple[int, int],
                 hidden: int | None = None):
    """Image, logits and caches of a fused run over the rows in three calls (the caches carry the state)."""
    # per colour group 72 / 68 outputs by default: a 64-wide tile and a narrower one
    hidden = hidden or (72 if c == 1 else 3 * 68)
    model = image_model(kind, c, labels=labels, k=11, hidden=hidden)
    family = family_of(model)
    packed = family.pack(model, wdtype)
    cond = family.fused_condition(model, packed, None if labels is None else torch.arange(n) % labels)
    noise = draw_noise(model, n, shape, seed=4)
    caches, image = packed.new_caches(n, *shape), torch.zeros(n, c, *shape, dtype=torch.int64)
    h = shape[0]
    logits = [pixelcnn_generate(packed, caches, image, noise, cond=cond, row_begin=r0, row_end=r1, return_logits=True)
              for r0, r1 in ((0, 1), (1, h // 2), (h // 2, h))]
    return image, torch.cat(logits, 1), [x.clone() for x in caches]


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,c,labels,n", [("pixelcnn", 1, None, 1), ("pixelcnn", 1, None, 3),
                                             ("gated", 3, 4, 1), ("gated", 3, 4, 2)])
def test_pixelcnn_one_and_two_threads_identical(kind, c, labels, n, wdtype, team_mode):
    one = at_threads(1, lambda: pixelcnn_run(kind, c, labels, wdtype, n, (5, 9)))
    two = at_threads(2, lambda: pixelcnn_run(kind, c, labels, wdtype, n, (5, 9)))
    assert_same_runs(one, two)
    assert len(torch.unique(one[0])) > 3


@pytest.mark.parametrize("kind,labels", [("gated", None), ("coded", 4)])
def test_gated_fused_tiles_one_and_two_threads_identical(kind, labels, team_mode):
    """32 rows, 64 channels, bfloat16: on AMX tiles each thread's group of 16 rows multiplies every later layer's
    link and horizontal conv in one pass (link_horizontal); "coded": aligned stacks, class-conditional."""
    one = at_threads(1, lambda: pixelcnn_run(kind, 1, labels, torch.bfloat16, 32, (5, 9), hidden=64))
    two = at_threads(2, lambda: pixelcnn_run(kind, 1, labels, torch.bfloat16, 32, (5, 9), hidden=64))
    assert_same_runs(one, two)
    assert len(torch.unique(one[0])) > 3


def pixelcnnpp_run(c: int, n: int, shape: tuple[int, int]):
    """Image and mixture parameters of a fused PixelCNN++ run (f = 72: tiles of 64 and 8 outputs)."""
    model = pixelcnnpp(c=c, filters=72, resnets=1, mixtures=2, seed=5, scale=2.0)
    noise = draw_noise(model, n, shape, seed=6)
    image = torch.zeros(n, c, *shape, dtype=torch.int64)
    params = pixelcnnpp_generate(pack_pixelcnnpp(model), image, noise, return_params=True)
    return image, params, []


@pytest.mark.parametrize("c,n", [(3, 1), (1, 2)])
def test_pixelcnnpp_one_and_two_threads_identical(c, n, team_mode):
    one = at_threads(1, lambda: pixelcnnpp_run(c, n, (8, 4)))
    two = at_threads(2, lambda: pixelcnnpp_run(c, n, (8, 4)))
    assert_same_runs(one, two)
    assert len(torch.unique(one[0])) > 3


@pytest.fixture
def busy_process():
    """A second process spinning on one core for the duration of the test."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield proc
    proc.kill()
    proc.wait()


def test_identical_next_to_a_busy_process(busy_process, monkeypatch):
    monkeypatch.setenv("ARKERN_TEAM", "always")  # every phase on the team: chunks are taken over, not waited for
    runs = [lambda: wavenet_run("odd", torch.float32, 1, 300), lambda: wavenet_run("odd", torch.float32, 4, 300),
            lambda: pixelcnn_run("pixelcnn", 1, None, torch.float32, 1, (5, 9)), lambda: pixelcnnpp_run(3, 1, (8, 4))]
    for run in runs:
        assert_same_runs(at_threads(1, run), at_threads(2, run))
