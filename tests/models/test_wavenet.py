"""WaveNet: teacher-forced logits of cached and fused decoding against forward, identical samples from the
naive, cached and fused samplers, ring-buffer contents, the fused op's sampler, and bad input.

What the sample tests claim exactly: with the same noise, naive (float64 model) == cached (float64 model)
== cached (float32 model) == fused (float32 model, C++ kernel), element for element, for every config.
Between float64 and float32 models the logits differ by float32 rounding, so a draw could only differ if a
uniform fell within ~1e-7 of a CDF boundary; for these fixed seeds none does.
"""

from __future__ import annotations

import copy

import pytest
import torch

from arkern.backends import cpu_isa, set_cpu_isa
from arkern.decode import wavenet as dw
from arkern.distributions import draw_uniforms, sample_categorical
from arkern.models import WaveNet
from arkern.models.wavenet import pack_wavenet
from arkern.ops.wavenet_decode import BACKENDS, wavenet_generate
from arkern.sampling import generate
from arkern.testing import assert_close, assert_close_rounded
from tests.conftest import kernel_backends, wavenet

KERNELS = kernel_backends(BACKENDS)
FUSED = ["reference"] + KERNELS

CONFIGS = {
    # name: (model kwargs, batch)
    "tiny": (dict(num_layers=4, residual_channels=5, skip_channels=7, num_classes=19, max_dilation=4), 1),
    "padded": (dict(num_layers=5, residual_channels=24, skip_channels=40, num_classes=70, max_dilation=8), 5),
    "local": (dict(num_layers=6, residual_channels=16, skip_channels=32, num_classes=32, max_dilation=8,
                   cond_channels=3, cond_hop=4), 5),
    "global": (dict(num_layers=4, residual_channels=8, skip_channels=16, num_classes=24, max_dilation=2,
                    global_channels=2), 1),
    "both": (dict(num_layers=4, residual_channels=8, skip_channels=16, num_classes=256, max_dilation=4,
                  cond_channels=2, cond_hop=3, global_channels=3), 2),
}


def _condition(model: WaveNet, batch: int, length: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    local = glob = None
    if cfg.cond_channels:
        local = torch.randn(batch, cfg.cond_channels, -(-length // cfg.cond_hop), generator=g, dtype=torch.float64)
    if cfg.global_channels:
        glob = torch.randn(batch, cfg.global_channels, generator=g, dtype=torch.float64)
    return local, glob


def _cond_arg(local, glob):
    if glob is None:
        return local
    return {"local": local, "global": glob}


# ---------------------------------------------------------------- teacher forcing

@pytest.mark.parametrize("ops", ["arkern", "eager"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_logits_match_forward_float64(name, ops):
    model, batch = wavenet(CONFIGS[name][0], torch.float64), CONFIGS[name][1]
    T = 40
    y = torch.randint(0, model.config.num_classes, (batch, T))
    local, glob = _condition(model, batch, T)
    expected = model(y, local, glob).transpose(1, 2)
    noise = torch.rand(batch, T, dtype=torch.float64)
    _, logits = dw.sample(model, noise, method="cached", ops=ops, forced=y, return_logits=True, cond=local,
                          gcond=glob)
    assert_close(logits, expected, name=f"cached logits ({ops})", dtype=torch.float64, scale=10)  # 1e-9


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_logits_match_forward_float32(name, backend):
    model, batch = wavenet(CONFIGS[name][0], torch.float32), CONFIGS[name][1]
    T = 37
    y = torch.randint(0, model.config.num_classes, (batch, T))
    local, glob = _condition(model, batch, T)
    expected = model(y, local, glob).transpose(1, 2)
    state = dw.WaveNetState.new(model, batch, cond=local, gcond=glob, length=T, dtype=torch.float32)
    _, logits = wavenet_generate(pack_wavenet(model), state.rings, state.prev, 0,
                                 torch.rand(batch, T, dtype=torch.float64), cond=state.cond,
                                 cond_hop=state.cond_hop, gbias=state.gcond, return_logits=True, forced=y,
                                 backend=backend)
    assert_close(logits, expected, name=f"fused logits ({backend})", dtype=torch.float32)
    assert torch.equal(state.prev, y[:, -2:])


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("name", ["padded", "both"])
def test_fused_bfloat16_weights(name, backend):
    # The bfloat16 precision: bf16 weights and bf16-rounded matrix inputs, fp32 sums. Near a float64 forward of
    # the model whose matrices are rounded to bf16 (embeddings, biases and conditioning stay float32) within
    # bf16 tolerances (the activations' rounding), and equal to the reference within float32 tolerances but for
    # the few values downstream of an activation rounded the other way (assert_close_rounded).
    model, batch = wavenet(CONFIGS[name][0], torch.float32), CONFIGS[name][1]
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for mod in [*rounded.dilated, *rounded.res, *rounded.skip, rounded.out, rounded.end]:
            mod.weight.copy_(mod.weight.to(torch.bfloat16).to(torch.float32))
    T = 30
    y = torch.randint(0, model.config.num_classes, (batch, T))
    local, glob = _condition(model, batch, T)
    expected = rounded.double()(y, local, glob).transpose(1, 2)
    noise = torch.rand(batch, T, dtype=torch.float64)
    out = {}
    for b in ("reference", backend):
        state = dw.WaveNetState.new(model, batch, cond=local, gcond=glob, length=T, dtype=torch.float32)
        _, out[b] = wavenet_generate(pack_wavenet(model, torch.bfloat16), state.rings, state.prev, 0, noise,
                                     cond=state.cond, cond_hop=state.cond_hop, gbias=state.gcond, return_logits=True,
                                     forced=y, backend=b)
    assert_close(out[backend], expected, name="bf16 logits vs the bf16-weight model", dtype=torch.bfloat16)
    assert_close_rounded(out[backend], out["reference"], name=f"bf16 logits ({backend})")


# ---------------------------------------------------------------- identical samples

SAMPLING = [dict(), dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8), dict(temperature=1.3, top_k=9, top_p=0.9)]


def _need_kernel():
    if not KERNELS or KERNELS[0].marks:
        pytest.skip("the cpu wavenet_generate kernel is not built")


@pytest.mark.parametrize("name,warp,T", [("tiny", 0, 300), ("tiny", 2, 200), ("padded", 4, 100),
                                         ("local", 3, 100), ("both", 1, 150), ("global", 0, 200)])
def test_naive_cached_fused_identical(name, warp, T):
    _need_kernel()
    kw = SAMPLING[warp]
    model, batch = wavenet(CONFIGS[name][0], torch.float64, seed=warp), CONFIGS[name][1]
    local, glob = _condition(model, batch, T)
    noise = draw_uniforms((batch, T), seed=10 + warp)
    cond = _cond_arg(local, glob)
    naive = generate(model, batch, length=T, method="naive", noise=noise, condition=cond, progress=False, **kw)
    cached = generate(model, batch, length=T, method="cached", noise=noise, condition=cond, progress=False, **kw)
    model32 = model.float()
    cached32 = generate(model32, batch, length=T, method="cached", noise=noise, condition=cond, progress=False,
                        **kw)
    fused = generate(model32, batch, length=T, method="fused", noise=noise, condition=cond, progress=False,
                     chunk_size=64, **kw)
    assert naive.shape == (batch, T)
    assert torch.equal(naive, cached)
    assert torch.equal(cached, cached32)
    assert torch.equal(cached32, fused)
    assert len(torch.unique(naive)) > 1


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("warp", range(len(SAMPLING)))
def test_cached_fused_identical(name, warp):
    # every config x warper without the (slow) naive sampler: cached and fused, float32 model, 300 steps
    _need_kernel()
    kw = SAMPLING[warp]
    model, batch = wavenet(CONFIGS[name][0], torch.float32, seed=warp), CONFIGS[name][1]
    T = 300
    local, glob = _condition(model, batch, T)
    noise = draw_uniforms((batch, T), seed=20 + warp)
    cond = _cond_arg(local, glob)
    cached = generate(model, batch, length=T, method="cached", ops="eager", noise=noise, condition=cond,
                      progress=False, **kw)
    fused = generate(model, batch, length=T, method="fused", noise=noise, condition=cond, progress=False, **kw)
    assert torch.equal(cached, fused)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("warp", range(len(SAMPLING)))
def test_fused_draws_equal_python_sampler(backend, warp):
    # the in-kernel sampler picks exactly what sample_categorical picks from the logits the kernel returns
    kw = SAMPLING[warp]
    model, batch = wavenet(CONFIGS["padded"][0], torch.float32, seed=3), CONFIGS["padded"][1]
    T = 60
    state = dw.WaveNetState.new(model, batch, dtype=torch.float32)
    noise = draw_uniforms((batch, T), seed=warp)
    ys, logits = wavenet_generate(pack_wavenet(model), state.rings, state.prev, 0, noise, return_logits=True,
                                  backend=backend, **kw)
    assert torch.equal(ys, sample_categorical(logits, noise, **kw))


def test_chunks_callback_and_threads():
    _need_kernel()
    model, batch = wavenet(CONFIGS["padded"][0], torch.float32), CONFIGS["padded"][1]
    noise = draw_uniforms((batch, 50), seed=4)
    whole = generate(model, batch, length=50, noise=noise, progress=False, chunk_size=50)
    seen = []
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parts = generate(model, batch, length=50, noise=noise, progress=False, chunk_size=7,
                         callback=lambda ys, start: seen.append((start, ys.clone())))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(whole, parts)
    assert [s for s, _ in seen] == list(range(0, 50, 7))
    assert torch.equal(torch.cat([ys for _, ys in seen], 1), whole)


def test_seed_and_generator():
    model = wavenet(CONFIGS["tiny"][0], torch.float32)
    a = generate(model, 3, length=20, method="cached", seed=5, progress=False)
    b = generate(model, 3, length=20, method="cached", generator=torch.Generator().manual_seed(5), progress=False)
    c = generate(model, 3, length=20, method="cached", noise=draw_uniforms((3, 20), seed=5), progress=False)
    assert torch.equal(a, b) and torch.equal(a, c)


# ---------------------------------------------------------------- state

@pytest.mark.parametrize("method", ["cached", "fused"])
def test_ring_buffers_hold_last_inputs(method):
    if method == "fused" and (not KERNELS or KERNELS[0].marks):
        pytest.skip("the cpu wavenet_generate kernel is not built")
    model, batch = wavenet(CONFIGS["local"][0], torch.float32), CONFIGS["local"][1]
    T = 27  # not a multiple of any dilation: the rings have wrapped
    y = torch.randint(0, model.config.num_classes, (batch, T))
    local, _ = _condition(model, batch, T)
    _, inputs = model.forward_with_layer_inputs(y, local)
    state = dw.WaveNetState.new(model, batch, cond=local, length=T, dtype=torch.float32)
    if method == "cached":
        stepper = dw.WaveNetStepper(model)
        for t in range(T):
            stepper.step(state)
            stepper.push(state, y[:, t])
    else:
        wavenet_generate(pack_wavenet(model), state.rings, state.prev, 0, torch.rand(batch, T, dtype=torch.float64),
                         cond=state.cond, cond_hop=state.cond_hop, forced=y)
        state.t = T
    for i, d in enumerate(model.dilations):
        assert_close(state.history(i), inputs[i][:, :, T - d:], name=f"ring {i} (d={d})", dtype=torch.float32)


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_fused_row_groups_and_chunks_bit_identical(wdtype, one_thread):
    # Row groups of one or two apply each layer's past tap to d steps at once (from the ring buffer); larger
    # groups apply it every step. Both accumulate every output in the same order, so the logits of a row are
    # bit-identical whether it is sampled alone in uneven chunks or inside a batch of five in one call. (Not at
    # the amx level for bfloat16: there groups of 4 or more sum on AMX tiles, in the hardware's order; this
    # test runs bfloat16 at the avx512 level, or avx2 where that is all there is.)
    _need_kernel()
    if wdtype == torch.bfloat16 and cpu_isa() == "amx":
        set_cpu_isa("avx512")
        try:
            _row_groups_and_chunks_bit_identical(wdtype)
        finally:
            set_cpu_isa(None)
    else:
        _row_groups_and_chunks_bit_identical(wdtype)


def _row_groups_and_chunks_bit_identical(wdtype):
    # dilations 1..8, local conditioning
    model, batch = wavenet(CONFIGS["local"][0], torch.float32), CONFIGS["local"][1]
    T = 41
    y = torch.randint(0, model.config.num_classes, (batch, T))
    local, _ = _condition(model, batch, T)
    noise = torch.rand(batch, T, dtype=torch.float64)
    packed = pack_wavenet(model, wdtype)
    whole = dw.WaveNetState.new(model, batch, cond=local, length=T, dtype=torch.float32)
    _, expected = wavenet_generate(packed, whole.rings, whole.prev, 0, noise, cond=whole.cond,
                                   cond_hop=whole.cond_hop, return_logits=True, forced=y)
    for rows in ([0], [1, 2], [3, 4]):
        part = dw.WaveNetState.new(model, len(rows), cond=local[rows], length=T, dtype=torch.float32)
        logits, t = [], 0
        for n in (1, 3, 5, 13, 19):  # chunk boundaries fall inside every dilation's d-step block
            _, lg = wavenet_generate(packed, part.rings, part.prev, t, noise[rows, t:t + n], cond=part.cond,
                                     cond_hop=part.cond_hop, return_logits=True, forced=y[rows, t:t + n])
            logits.append(lg)
            t += n
        assert t == T
        assert torch.equal(torch.cat(logits, 1), expected[rows])
        for ring, ring_all in zip(part.rings, whole.rings):
            assert torch.equal(ring, ring_all[rows])


# ---------------------------------------------------------------- bad input

def _bad_calls():
    model = wavenet(CONFIGS["local"][0], torch.float32)
    good = torch.randn(2, 3, 5)  # 5 frames = 20 samples at cond_hop 4
    return model, [
        (dict(noise=torch.rand(2, 19, dtype=torch.float64), condition=good), ValueError, "noise must have shape"),
        (dict(noise=torch.rand(2, 20), condition=good), TypeError, "noise must be float64"),
        (dict(condition=torch.randn(2, 3, 4)), ValueError, "must have 5 frames"),
        (dict(condition=torch.randn(3, 3, 5)), ValueError, "condition has batch 3"),
        (dict(condition=None), ValueError, "needs a local condition"),
        (dict(condition=good, temperature=0.0), ValueError, "temperature must be"),
        (dict(condition=good, temperature=-1.0), ValueError, "temperature must be"),
        (dict(condition=good, top_p=0.0), ValueError, "top_p must be in"),
        (dict(condition=good, top_p=1.5), ValueError, "top_p must be in"),
        (dict(condition=good, top_k=0), ValueError, "top_k must be"),
        (dict(condition=good, method="fast"), ValueError, "method must be one of"),
        (dict(condition=good, seed=1, noise=torch.rand(2, 20, dtype=torch.float64)), ValueError, "not both"),
    ]


@pytest.mark.parametrize("case", range(12))
def test_bad_input(case):
    model, calls = _bad_calls()
    kwargs, exc, match = calls[case]
    with pytest.raises(exc, match=match):
        generate(model, 2, length=20, progress=False, **{"method": "cached", **kwargs})


def test_bad_op_input():
    model, batch = wavenet(CONFIGS["padded"][0], torch.float32), CONFIGS["padded"][1]
    packed = pack_wavenet(model)
    state = dw.WaveNetState.new(model, batch, dtype=torch.float32)
    noise = torch.rand(batch, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="prev must be"):
        wavenet_generate(packed, state.rings, state.prev[:2], 0, noise)
    with pytest.raises(ValueError, match=r"rings\[1\] must be"):
        wavenet_generate(packed, [state.rings[0], state.rings[1][:, :, :1], *state.rings[2:]], state.prev, 0, noise)
    with pytest.raises(ValueError, match=r"rings\[2\] must be .* time-major"):
        wavenet_generate(packed, [*state.rings[:2], state.rings[2].contiguous(), *state.rings[3:]], state.prev, 0,
                         noise)
    with pytest.raises(ValueError, match="rings must hold"):
        wavenet_generate(packed, state.rings[:-1], state.prev, 0, noise)
    with pytest.raises(ValueError, match="prev holds samples outside"):
        wavenet_generate(packed, state.rings, torch.full_like(state.prev, 70), 0, noise)
    with pytest.raises(ValueError, match="forced holds samples outside"):
        wavenet_generate(packed, state.rings, state.prev, 0, noise, forced=torch.full((batch, 4), -1))
    with pytest.raises(ValueError, match="too few for steps"):
        wavenet_generate(packed, state.rings, state.prev, 0, noise, cond=torch.zeros(batch, 1, 5, 48), cond_hop=2)
    with pytest.raises(TypeError, match="dtype must be float32 or bfloat16"):
        pack_wavenet(model, torch.float16)
    with pytest.raises(TypeError, match="no model family for"):
        generate(torch.nn.Linear(2, 2), 1, length=3, progress=False)


def test_opcheck():
    if not KERNELS or KERNELS[0].marks:
        pytest.skip("the cpu wavenet_generate kernel is not built")
    model = wavenet(CONFIGS["tiny"][0], torch.float32)
    packed = pack_wavenet(model)
    state = dw.WaveNetState.new(model, 2, dtype=torch.float32)
    args = (*packed.tensors(), list(packed.dilations), state.rings, state.prev, 0,
            torch.rand(2, 5, dtype=torch.float64), None, 1, None, 1.0, 0, 1.0, True, None)
    torch.library.opcheck(torch.ops.arkern.wavenet_generate.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_forward_is_causal_and_trainable():
    model, batch = wavenet(CONFIGS["both"][0], torch.float64), CONFIGS["both"][1]
    T = 24
    y = torch.randint(0, model.config.num_classes, (batch, T))
    local, glob = _condition(model, batch, T)
    logits = model(y, local, glob)
    y2 = y.clone()
    y2[:, 10:] = (y2[:, 10:] + 1) % model.config.num_classes
    logits2 = model(y2, local, glob)
    assert torch.equal(logits[:, :, :11], logits2[:, :, :11])  # position t sees only y[:, :t]
    assert not torch.equal(logits[:, :, 11:], logits2[:, :, 11:])
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
