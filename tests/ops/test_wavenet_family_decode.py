"""wavenet_family_generate (the generalised fused WaveNet sampler): teacher-forced head outputs of every backend
against the model's forward, the kernel's draws against the Python heads, row groups and chunks bit-identical,
bfloat16 weights, opcheck and bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from arkern import wavenet_heads as heads
from arkern.decode import wavenet as dw
from arkern.distributions import draw_uniforms
from arkern.families import family_of
from arkern.models.wavenet import pack_wavenet_family
from arkern.ops.wavenet_family_decode import BACKENDS, wavenet_family_generate
from arkern.testing import assert_close
from tests.conftest import kernel_backends
from tests.models.test_wavenet_family import CONFIGS, _condition, _data, _model

KERNELS = kernel_backends(BACKENDS)
FUSED = ["reference"] + KERNELS


def _need_kernel():
    if not KERNELS or KERNELS[0].marks:
        pytest.skip("the cpu wavenet_family_generate kernel is not built")


def _setup(name, batch=None, T=24, dtype=torch.float32, seed=0):
    model = _model(name, dtype, seed=seed)
    batch = batch or CONFIGS[name][1]
    cond = _condition(model, name, batch)
    local, glob = (cond["local"], cond["global"]) if isinstance(cond, dict) else (cond, None)
    return model, batch, local, glob


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forced_outputs_match_forward(name, backend):
    model, batch, local, glob = _setup(name)
    T = 16 if name == "gauss_stretch" else 20
    y = _data(model, batch, T)
    expected = model(y, local, glob).transpose(1, 2)
    state = dw.WaveNetState.new(model, batch, cond=local, gcond=glob, length=T, dtype=torch.float32)
    noise = draw_uniforms(family_of(model).noise_shape(model, batch, T), seed=1)
    _, out = wavenet_family_generate(pack_wavenet_family(model), state.rings, state.prev, 0, noise, cond=state.cond,
                                     cond_hop=state.cond_hop, gbias=state.gcond, return_logits=True, forced=y,
                                     backend=backend)
    assert_close(out, expected, name=f"fused outputs ({backend})", dtype=torch.float32, scale=4)
    assert torch.equal(state.prev, y[:, -2:])


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_draws_equal_python_heads(name, backend):
    model, batch, local, glob = _setup(name, seed=1)
    T = 30
    kw = {} if model.config.head == "gaussian" else dict(temperature=0.8, top_k=2)
    cond = {"local": torch.rand(batch, model.config.cond_channels, 12, dtype=torch.float64), "global": glob}
    state = dw.WaveNetState.new(model, batch, cond=cond["local"], gcond=glob, length=T, dtype=torch.float32)
    noise = draw_uniforms(family_of(model).noise_shape(model, batch, T), seed=2)
    ys, out = wavenet_family_generate(pack_wavenet_family(model), state.rings, state.prev, 0, noise,
                                      cond=state.cond, cond_hop=state.cond_hop, gbias=state.gcond,
                                      return_logits=True, backend=backend, **kw)
    cfg = model.config
    want = torch.stack([heads.sample(cfg.head, out[:, s], noise[:, s], log_scale_min=cfg.log_scale_min, **kw)
                        for s in range(T)], 1)
    if cfg.head == "softmax":
        assert torch.equal(ys, want)
    else:
        assert_close(ys, want, name="continuous draws", dtype=torch.float64, scale=1e3)


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_row_groups_and_chunks_bit_identical(wdtype, one_thread):
    _need_kernel()
    model, _, _, _ = _setup("mol_convt2d")
    batch, T = 5, 41
    local = torch.rand(batch, model.config.cond_channels, 7, dtype=torch.float64)
    y = _data(model, batch, T)
    noise = draw_uniforms((batch, T, 2), seed=3)
    packed = pack_wavenet_family(model, wdtype)
    whole = dw.WaveNetState.new(model, batch, cond=local, length=T, dtype=torch.float32)
    _, expected = wavenet_family_generate(packed, whole.rings, whole.prev, 0, noise, cond=whole.cond,
                                          return_logits=True, forced=y)
    for rows in ([0], [1, 2], [3, 4]):
        part = dw.WaveNetState.new(model, len(rows), dtype=torch.float32)
        part.cond = whole.cond[rows].contiguous()  # the same projected conditioning (torch's own products
        # may round differently for another batch size)
        outs, t = [], 0
        for n in (1, 3, 5, 13, 19):
            _, o = wavenet_family_generate(packed, part.rings, part.prev, t, noise[rows, t:t + n], cond=part.cond,
                                           return_logits=True, forced=y[rows, t:t + n])
            outs.append(o)
            t += n
        assert torch.equal(torch.cat(outs, 1), expected[rows])
        for ring, ring_all in zip(part.rings, whole.rings):
            assert torch.equal(ring, ring_all[rows])


@pytest.mark.parametrize("backend", FUSED)
def test_bfloat16_weights(backend):
    model, batch, local, glob = _setup("softmax_k3_convt1d")
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for mod in [*rounded.dilated, *rounded.res, *rounded.skip, rounded.out, rounded.end]:
            mod.weight.copy_(mod.weight.to(torch.bfloat16).to(torch.float32))
    T = 20
    y = _data(model, batch, T)
    expected = rounded.double()(y, local, glob).transpose(1, 2)
    state = dw.WaveNetState.new(model, batch, cond=local, gcond=glob, length=T, dtype=torch.float32)
    _, out = wavenet_family_generate(pack_wavenet_family(model, torch.bfloat16), state.rings, state.prev, 0,
                                     torch.rand(batch, T, dtype=torch.float64), cond=state.cond,
                                     cond_hop=state.cond_hop, gbias=state.gcond, return_logits=True, forced=y,
                                     backend=backend)
    assert_close(out, expected, name="bf16-weight outputs", dtype=torch.float32, scale=4)


def test_opcheck_and_bad_input():
    model, batch, _, _ = _setup("mol_convt2d")
    packed = pack_wavenet_family(model)
    state = dw.WaveNetState.new(model, batch, dtype=torch.float32)
    noise = torch.rand(batch, 4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"noise must be a \(B, T, 2\)"):
        wavenet_family_generate(packed, state.rings, state.prev, 0, noise[:, :, 0])
    with pytest.raises(ValueError, match="prev must be a contiguous torch.float64"):
        wavenet_family_generate(packed, state.rings, state.prev.long(), 0, noise)
    with pytest.raises(ValueError, match=r"rings\[1\] must be float32 \(2, 6, 4\)"):
        wavenet_family_generate(packed, [state.rings[0], state.rings[1][:, :, :2], *state.rings[2:]], state.prev, 0,
                                noise)
    with pytest.raises(ValueError, match="too few for steps"):
        wavenet_family_generate(packed, state.rings, state.prev, 0, noise, cond=torch.zeros(batch, 2, 4, 10))
    if not KERNELS or KERNELS[0].marks:
        return
    args = (*packed.tensors(), list(packed.dims), list(packed.dilations), state.rings, state.prev, 0, noise, None,
            1, None, 1.0, 0, 1.0, -7.0, True, None)
    torch.library.opcheck(torch.ops.arkern.wavenet_family_generate.default, args,
                          test_utils=("test_schema", "test_faketensor"))
