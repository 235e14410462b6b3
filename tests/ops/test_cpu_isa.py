"""The fused CPU samplers (WaveNet, PixelCNN, Gated PixelCNN) at every instruction-set level this machine has
(avx2, avx512, amx), against the reference, in both precisions; levels the machine or build lacks are skipped
with the reason.

What is claimed exactly: at every level, float32 packs give the reference's logits and ring-buffer contents
within float32 tolerances; bfloat16 packs within float32 tolerances except the few values downstream of an
activation whose float32 value fell the other side of a bfloat16 rounding boundary (within bfloat16 tolerances;
:func:`arkern.testing.assert_close_rounded`) — the bfloat16 precision rounds the same matrix inputs in both and
only the order of the float32 sums differs; and both give the reference's samples for the same noise. At the amx
level bfloat16 packs run their products on tiles (WaveNet: row groups of 4 or more; ``last_cpu_isa`` says so).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from arkern.backends import (
    CPU_ISAS,
    BackendUnavailableError,
    cpu_isa,
    cpu_isas,
    last_cpu_isa,
    set_cpu_isa,
)
from arkern.decode import wavenet as dw
from arkern.distributions import draw_uniforms
from arkern.families import draw_noise, family_of
from arkern.models.wavenet import pack_wavenet
from arkern.ops.amx_layout import pack_vnni, packed_size, unpack_vnni
from arkern.ops.pixelcnn_decode import pixelcnn_generate
from arkern.ops.wavenet_decode import BACKENDS, pack_tiles, ring_storage, wavenet_generate
from arkern.testing import assert_close, assert_close_rounded
from tests.conftest import image_model, kernel_backends, wavenet

_KERNEL = kernel_backends(BACKENDS)[0]


def _isa_params() -> list:
    params = []
    for name, why in cpu_isas().items():
        marks = [pytest.mark.skip(reason=f"{name}: {why}")] if why else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


ISAS = _isa_params()


@pytest.fixture
def at_isa(request):
    """Run the test body at the instruction-set level given by the test's `isa` parameter."""
    set_cpu_isa(request.node.callspec.params["isa"])
    yield
    set_cpu_isa(None)


def _need_kernel():
    if _KERNEL.marks:
        pytest.skip("the cpu wavenet_generate kernel is not built")


# ---------------------------------------------------------------- the level itself

def test_levels_reported_and_default_is_best_available():
    _need_kernel()
    levels = cpu_isas()
    assert tuple(levels) == CPU_ISAS
    available = [name for name, why in levels.items() if why is None]
    assert available, levels
    assert cpu_isa() == available[-1] or os.environ.get("ARKERN_ISA")
    for why in levels.values():
        assert why is None or (isinstance(why, str) and why)


def test_forcing_a_level():
    _need_kernel()
    with pytest.raises(ValueError, match="isa must be one of"):
        set_cpu_isa("sse2")
    try:
        for name, why in cpu_isas().items():
            if why is None:
                assert set_cpu_isa(name) == name and cpu_isa() == name
            else:
                with pytest.raises(BackendUnavailableError, match=name):
                    set_cpu_isa(name)
    finally:
        set_cpu_isa(None)


@pytest.mark.parametrize("value,message", [("neon", "must be one of avx2, avx512, amx"),
                                           *[(n, "unavailable here") for n, w in cpu_isas().items() if w]])
def test_bad_environment_level_is_an_error(value, message):
    _need_kernel()
    code = ("import torch, arkern\nfrom arkern.models.wavenet import pack_wavenet\nfrom arkern.models import WaveNet\n"
            "from arkern.sampling import generate\n"
            "m = WaveNet(num_layers=2, residual_channels=4, skip_channels=4, num_classes=8, max_dilation=2)\n"
            "generate(m, 1, length=3, method='fused', progress=False)\n")
    env = dict(os.environ, ARKERN_ISA=value)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"ARKERN_ISA={value}" in proc.stderr or "ARKERN_ISA must be" in proc.stderr, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------- the tile layout

@pytest.mark.parametrize("mp,n", [(16, 1), (32, 31), (48, 64), (64, 70)])
def test_vnni_layout_round_trip(mp, n):
    w = torch.randn(mp, n)
    tiles = pack_vnni(w)
    assert tiles.dtype == torch.bfloat16 and tiles.numel() == packed_size(mp, n)
    assert torch.equal(unpack_vnni(tiles, mp, n), w.to(torch.bfloat16))
    # one tile = 16 rows of 16 output pairs: row r holds inputs 2r, 2r + 1 of every output
    padded = torch.nn.functional.pad(w.to(torch.bfloat16), (0, 32))  # zeros past input n
    assert torch.equal(tiles[:512].reshape(16, 16, 2), padded[:16, :32].reshape(16, 16, 2).permute(1, 0, 2))


# ---------------------------------------------------------------- WaveNet at every level

WAVENET = dict(num_layers=5, residual_channels=24, skip_channels=40, num_classes=70, max_dilation=8)
# widths multiples of 32: the amx level's whole-vector passes (layer input, gate, relus rounded in one pass)
WAVENET_X32 = dict(num_layers=4, residual_channels=32, skip_channels=64, num_classes=96, max_dilation=4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 5, 17])
@pytest.mark.parametrize("config", [WAVENET, WAVENET_X32], ids=["odd", "x32"])
def test_wavenet_levels_match_reference(isa, wdtype, batch, config, at_isa, one_thread):
    _need_kernel()
    model = wavenet(config, torch.float32, seed=7)
    T = 23
    y = torch.randint(0, model.config.num_classes, (batch, T))
    noise = torch.rand(batch, T, dtype=torch.float64)
    packed = pack_wavenet(model, wdtype)
    assert (packed.tiles is not None) == (wdtype == torch.bfloat16 and cpu_isas()["amx"] is None)
    out = {}
    for backend in ("reference", "cpu"):
        state = dw.WaveNetState.new(model, batch, length=T, dtype=torch.float32)
        _, logits = wavenet_generate(packed, state.rings, state.prev, 0, noise, return_logits=True, forced=y,
                                     backend=backend)
        out[backend] = (logits, state.rings)
    check = assert_close if wdtype == torch.float32 else assert_close_rounded
    check(out["cpu"][0], out["reference"][0], name=f"logits ({isa}, {wdtype})", dtype=torch.float32)
    for i, (ring, ring_ref) in enumerate(zip(out["cpu"][1], out["reference"][1])):
        check(ring, ring_ref, name=f"ring {i}", dtype=torch.float32)
    amx_rows = isa == "amx" and wdtype == torch.bfloat16 and batch >= 4
    assert last_cpu_isa("wavenet_generate") == ("amx" if amx_rows else "avx2" if isa == "avx2" else "avx512")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("config", [WAVENET, WAVENET_X32], ids=["odd", "x32"])
def test_wavenet_levels_draw_the_references_samples(isa, wdtype, config, at_isa, one_thread):
    _need_kernel()
    model = wavenet(config, torch.float32, seed=8)
    batch, T = 6, 120
    noise = draw_uniforms((batch, T), seed=3)
    packed = pack_wavenet(model, wdtype)
    samples = {}
    for backend in ("reference", "cpu"):
        state = dw.WaveNetState.new(model, batch, length=T, dtype=torch.float32)
        samples[backend], _ = wavenet_generate(packed, state.rings, state.prev, 0, noise, temperature=0.9,
                                               backend=backend)
    assert torch.equal(samples["cpu"], samples["reference"])
    assert len(torch.unique(samples["cpu"])) > 1


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("config", [WAVENET, WAVENET_X32], ids=["odd", "x32"])
def test_wavenet_ring_storages_agree(isa, wdtype, config, at_isa, one_thread):
    """Rings in "slots" storage ((d, B, R): a step's rows contiguous) give what "rows" storage ((B, d, R)) gives,
    bit for bit: samples, logits and ring contents, over calls that carry the state (one of a single step), for
    one row, a few rows (below the AMX row groups), an odd group and a full tile group plus one row; then the same
    state continues in the other precision."""
    _need_kernel()
    model = wavenet(config, torch.float32, seed=5)
    chunks = (1, 9, 30)
    T = sum(chunks)
    packs = {dt: pack_wavenet(model, dt) for dt in (torch.float32, torch.bfloat16)}
    other = torch.float32 if wdtype == torch.bfloat16 else torch.bfloat16
    for batch in (1, 3, 17, 33):
        noise = draw_uniforms((batch, T + 7), seed=batch)
        runs = {}
        for storage in ("rows", "slots"):
            state = dw.WaveNetState.new(model, batch, length=T, dtype=torch.float32, ring_storage=storage)
            assert all(ring_storage(r) == (storage if batch > 1 and r.shape[-1] > 1 else "rows") for r in state.rings)
            out, t = [], 0
            for n, dt in [(n, wdtype) for n in chunks] + [(7, other)]:
                out += wavenet_generate(packs[dt], state.rings, state.prev, t, noise[:, t:t + n], return_logits=True)
                t += n
            runs[storage] = out, [r.clone() for r in state.rings], state.prev.clone()
        (out_r, rings_r, prev_r), (out_s, rings_s, prev_s) = runs["rows"], runs["slots"]
        assert all(torch.equal(a, b) for a, b in zip(out_r, out_s)), f"batch {batch}: samples or logits differ"
        assert all(torch.equal(a, b) for a, b in zip(rings_r, rings_s)), f"batch {batch}: rings differ"
        assert torch.equal(prev_r, prev_s)
        assert any(r.abs().sum() > 0 for r in rings_s)


def test_wavenet_ring_storage_is_checked():
    model = wavenet(WAVENET, torch.float32, seed=5)
    packed = pack_wavenet(model, torch.float32)
    noise = torch.rand(3, 2, dtype=torch.float64)
    rings = [torch.zeros(3, packed.residual_channels, d) for d in packed.dilations]  # channel-major: neither storage
    rings[0] = rings[0].transpose(1, 2).contiguous().transpose(1, 2)
    assert ring_storage(rings[0]) == "rows" and ring_storage(rings[2]) is None
    with pytest.raises(ValueError, match=r"rings\[1\] must be float32 \(3, 24, 2\) with time-major storage"):
        wavenet_generate(packed, rings, torch.zeros(3, 2, dtype=torch.int64), 0, noise)
    with pytest.raises(ValueError, match="ring_storage must be one of"):
        dw.WaveNetState.new(model, 3, ring_storage="columns")


def test_wavenet_tiles_are_the_same_weights():
    model = wavenet(WAVENET, torch.float32, seed=9)
    packed = pack_wavenet(model, torch.bfloat16)
    tiles = pack_tiles(packed)
    R, S, A, L = 24, 40, 70, len(packed.dilations)
    assert tiles.numel() == L * (packed_size(64, 48) + packed_size(80, 24)) + packed_size(80, 40) + packed_size(80, 70)
    end = unpack_vnni(tiles[-packed_size(80, A):], 80, A)
    assert torch.equal(end[:A].float(), model.end.weight[:, :, 0].to(torch.bfloat16).float())
    assert S == model.config.skip_channels and R == model.config.residual_channels


# ---------------------------------------------------------------- PixelCNN / Gated PixelCNN at every level

@pytest.mark.parametrize("isa", [p for p in ISAS if p.id == "amx"])
# channels and colour groups multiples of 32: on AMX tiles the PixelCNN block convs (with a full tile of rows)
# and the Gated vertical (rows a multiple of 16) and horizontal stacks read a bfloat16 copy of their rings, and
# some float32 rings keep only the rows a call leaves behind; 3 calls, one of a single row; "plain": a 5x5
# kernel (2 rows above), no residual 1x1; Gated with 3 colours: class-conditional; "coded": aligned stacks;
# Gated with rows a multiple of 16: every layer after the first multiplies its link and horizontal conv in one
# tile pass (link_horizontal), per colour group with 3 colours; "coded" with 32 rows: class-conditional too
@pytest.mark.parametrize("kind,c,hidden,n", [("pixelcnn", 1, 64, 17), ("pixelcnn", 3, 96, 17), ("plain", 1, 32, 17),
                                             ("gated", 1, 64, 16), ("gated", 3, 96, 17), ("gated", 3, 96, 32),
                                             ("coded", 1, 64, 16), ("coded", 1, 64, 32)])
def test_pixelcnn_bfloat16_rings_on_tiles(isa, kind, c, hidden, n, at_isa, one_thread):
    _need_kernel()
    labels = 4 if (kind == "gated" and c == 3) or (kind == "coded" and n == 32) else None
    model = image_model(kind, c, k=11, hidden=hidden, labels=labels)
    h, w = 5, 4
    packed = family_of(model).pack(model, torch.bfloat16)
    cond = family_of(model).fused_condition(model, packed, None if labels is None else torch.arange(n) % labels)
    noise = draw_noise(model, n, (h, w), seed=6)
    out = {}
    for backend in ("reference", "cpu"):
        caches, image = packed.new_caches(n, h, w), torch.zeros(n, c, h, w, dtype=torch.int64)
        logits = [pixelcnn_generate(packed, caches, image, noise, cond=cond, row_begin=r0, row_end=r1,
                                    return_logits=True, backend=backend) for r0, r1 in ((0, 1), (1, 4), (4, h))]
        out[backend] = (image, torch.cat(logits, 1), caches)
    assert torch.equal(out["cpu"][0], out["reference"][0])
    assert_close_rounded(out["cpu"][1], out["reference"][1], name="logits", dtype=torch.float32)
    for k, (got, want) in enumerate(zip(out["cpu"][2], out["reference"][2])):
        assert_close_rounded(got, want, name=f"cache {k}", dtype=torch.float32)
    assert last_cpu_isa("pixelcnn_generate") == "amx"

@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
# 5 rows: AMX tiles padded to 16; 5 x 6: the row pass multiplies 30 (row, column) pairs, one partial piece of
# tiles; 5 x 14: 70 pairs, a full piece of 64 and a partial one (the Gated vertical stack: 64-pair chunks too);
# 17 rows: a full tile of rows and a partial one, each pixel's spatial convs in one product (no row pass)
@pytest.mark.parametrize("kind,c,labels,shape", [("pixelcnn", 1, None, (5, 5, 6)), ("pixelcnn", 3, None, (5, 5, 6)),
                                                 ("gated", 3, 4, (5, 5, 6)), ("pixelcnn", 1, None, (5, 3, 14)),
                                                 ("gated", 1, None, (5, 3, 14)), ("pixelcnn", 1, None, (17, 4, 5)),
                                                 ("pixelcnn", 3, None, (17, 3, 4)), ("gated", 3, 4, (17, 3, 4))])
def test_pixelcnn_levels_match_reference(isa, wdtype, kind, c, labels, shape, at_isa, one_thread):
    _need_kernel()
    model = image_model(kind, c, labels=labels, k=11, hidden=40 if c == 1 else 42)  # tile widths 16..64
    n, h, w = shape
    packed = family_of(model).pack(model, wdtype)
    assert bool(packed.tiles) == (wdtype == torch.bfloat16 and cpu_isas()["amx"] is None)
    cond = family_of(model).fused_condition(model, packed, None if labels is None else torch.arange(n) % labels)
    noise = draw_noise(model, n, (h, w), seed=5)
    out = {}
    for backend in ("reference", "cpu"):
        caches, image = packed.new_caches(n, h, w), torch.zeros(n, c, h, w, dtype=torch.int64)
        logits = [pixelcnn_generate(packed, caches, image, noise, cond=cond, row_begin=r0, row_end=r1,
                                    return_logits=True, backend=backend) for r0, r1 in ((0, 2), (2, h))]
        out[backend] = (image, torch.cat(logits, 1))
    assert torch.equal(out["cpu"][0], out["reference"][0])
    check = assert_close if wdtype == torch.float32 else assert_close_rounded
    check(out["cpu"][1], out["reference"][1], name=f"logits ({isa}, {wdtype})", dtype=torch.float32)
    expect = "amx" if isa == "amx" and wdtype == torch.bfloat16 else "avx2" if isa == "avx2" else "avx512"
    assert last_cpu_isa("pixelcnn_generate") == expect
