"""Triton WaveNet decode (arkern/triton/wavenet_decode.py): executed in the interpreter on CPU tensors,
and compiled for sm_80 / sm_90 by Triton's own compiler (no GPU needed for that).

The interpreter tests need TRITON_INTERPRET=1 (``make test`` sets it) and skip with that reason otherwise.
They claim: the in-kernel draw picks exactly what arkern.sampling.sample_categorical picks, ties
included; teacher-forced logits equal the model's forward and the ring buffers hold the last inputs; and
``generate(method="fused")`` on the triton backend returns the same samples as the cached sampler and the
C++ fused kernel, for the same noise. Configurations are tiny: the interpreter runs ~10 steps per second.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import arkern
from arkern.backends import triton_interpret
from arkern.decode import wavenet as dw
from arkern.distributions import draw_uniforms, sample_categorical
from arkern.models import WaveNet
from arkern.models.wavenet import pack_wavenet
from arkern.ops.wavenet_decode import BACKENDS, wavenet_generate
from arkern.sampling import generate
from arkern.testing import assert_close, assert_close_rounded
from tests.conftest import wavenet

HAVE_TRITON = importlib.util.find_spec("triton") is not None
interpreted = pytest.mark.skipif(not (HAVE_TRITON and triton_interpret()),
                                 reason="Triton kernels run on CPU tensors only in the interpreter: set "
                                        "TRITON_INTERPRET=1 (make test does)" if HAVE_TRITON
                                 else "Triton is not installed")

CONFIGS = {
    # tiny, with local (cond_hop 3) and global conditioning
    "cond": dict(num_layers=3, residual_channels=8, skip_channels=12, num_classes=20, max_dilation=2,
                 cond_channels=2, cond_hop=3, global_channels=2),
    # R, S, A whose 16-padding is not a power of two (Rp = 32 > R = 20, Ap = 48 < 64 lanes)
    "padded": dict(num_layers=3, residual_channels=20, skip_channels=16, num_classes=33, max_dilation=4),
}
SAMPLING = [dict(), dict(top_k=4), dict(temperature=1.3, top_k=9, top_p=0.8)]


def _condition(model: WaveNet, batch: int, length: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    g = torch.Generator().manual_seed(1)
    cfg = model.config
    frames = -(-length // cfg.cond_hop)
    local = torch.randn(batch, cfg.cond_channels, frames, generator=g) if cfg.cond_channels else None
    glob = torch.randn(batch, cfg.global_channels, generator=g) if cfg.global_channels else None
    return local, glob


@interpreted
@pytest.mark.parametrize("warp", [*SAMPLING, dict(temperature=0.6), dict(top_p=0.3), dict(top_p=0.5), dict(top_k=1),
                                  dict(top_k=5, top_p=0.6)])
def test_draw_equals_sample_categorical(warp):
    from arkern.triton.wavenet_decode import sample_categorical as triton_draw

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(48, 37, generator=g)
    logits[::2] = torch.randint(-2, 3, (24, 37), generator=g).float()  # many ties: tie rules and sum order matter
    u = torch.rand(48, dtype=torch.float64, generator=g)
    assert torch.equal(triton_draw(logits, u, **warp), sample_categorical(logits, u, **warp))


@interpreted
@pytest.mark.parametrize("name", list(CONFIGS))
def test_teacher_forced_logits_and_ring_buffers(name):
    model = wavenet(CONFIGS[name])
    B, T = 3, 11  # T not a multiple of the dilations: the rings have wrapped
    y = torch.randint(0, model.config.num_classes, (B, T))
    local, glob = _condition(model, B, T)
    expected, inputs = model.forward_with_layer_inputs(y, local, glob)
    state = dw.WaveNetState.new(model, B, cond=local, gcond=glob, length=T, dtype=torch.float32)
    samples, logits = wavenet_generate(pack_wavenet(model), state.rings, state.prev, 0,
                                       torch.rand(B, T, dtype=torch.float64), cond=state.cond,
                                       cond_hop=state.cond_hop, gbias=state.gcond, return_logits=True, forced=y,
                                       backend="triton")
    state.t = T
    assert arkern.last_backend("wavenet_generate") == "triton"
    assert torch.equal(samples, y) and torch.equal(state.prev, y[:, -2:])
    assert_close(logits, expected.transpose(1, 2), name="triton logits", dtype=torch.float32)
    for i, d in enumerate(model.dilations):
        assert_close(state.history(i), inputs[i][:, :, T - d:], name=f"ring {i} (d={d})", dtype=torch.float32)


@interpreted
@pytest.mark.parametrize("warp", range(len(SAMPLING)))
def test_fused_triton_samples_identical_to_cached_and_cpu(warp, monkeypatch):
    kw = SAMPLING[warp]
    name = "cond" if warp != 1 else "padded"
    model = wavenet(CONFIGS[name], seed=warp)
    B, T = 3, 20
    local, glob = _condition(model, B, T)
    cond = {"local": local, "global": glob}
    noise = draw_uniforms((B, T), seed=30 + warp)
    run = dict(length=T, noise=noise, condition=cond, progress=False, **kw)
    cached = generate(model, B, method="cached", ops="eager", **run)
    monkeypatch.setenv("ARKERN_BACKEND", "triton")
    fused = generate(model, B, method="fused", chunk_size=7, **run)  # 3 calls: t0 and prev carry over
    assert arkern.last_backend("wavenet_generate") == "triton"
    assert torch.equal(fused, cached)
    assert len(torch.unique(fused)) > 1
    if not BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.float32):
        monkeypatch.setenv("ARKERN_BACKEND", "cpu")
        assert torch.equal(fused, generate(model, B, method="fused", **run))


@interpreted
def test_bfloat16_weights_match_cpu_kernel():
    model = wavenet(CONFIGS["padded"], seed=5)
    B, T = 2, 12
    packed = pack_wavenet(model, torch.bfloat16)
    noise = draw_uniforms((B, T), seed=2)
    ref_state = dw.WaveNetState.new(model, B, dtype=torch.float32)
    ref_backend = "reference" if BACKENDS.not_supported_reasons("cpu", torch.device("cpu"), torch.bfloat16) else "cpu"
    expected = wavenet_generate(packed, ref_state.rings, ref_state.prev, 0, noise, return_logits=True,
                                backend=ref_backend)
    state = dw.WaveNetState.new(model, B, dtype=torch.float32)
    ys, logits = wavenet_generate(packed, state.rings, state.prev, 0, noise, return_logits=True, backend="triton")
    assert_close_rounded(logits, expected[1], name="bf16-weight logits")
    assert torch.equal(ys, expected[0])
    assert torch.equal(ys, sample_categorical(logits, noise))


@interpreted
def test_device_mix_is_a_clear_error():
    model = wavenet(CONFIGS["padded"])
    state = dw.WaveNetState.new(model, 1, dtype=torch.float32)
    packed = pack_wavenet(model)
    packed.b_end = packed.b_end.to("meta")
    with pytest.raises(ValueError, match="b_end is on meta but noise is on cpu"):
        wavenet_generate(packed, state.rings, state.prev, 0, torch.rand(1, 2, dtype=torch.float64),
                         backend="triton")


_COMPILE = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from arkern.triton import wavenet_decode as tw

    INT64 = {"ring_tab_ptr", "ring_strides_ptr", "dil_ptr", "prev_ptr", "forced_ptr", "samples_ptr"}
    FP64 = {"noise_ptr", "params_ptr", "zscratch_ptr"}
    WEIGHTS = {"wd_ptr", "wrs_ptr", "wo_ptr", "we_ptr"}
    # the nv-wavenet medium configuration (R=64, S=256, A=256), 8 rows per program, every feature on
    CONST = dict(TILE_M=64, BLOCK_B=8, BLOCK_R=64, BLOCK_RS=512, BLOCK_A=256, K_DIL=4, K_RS=1, K_OUT=2, K_END=2,
                 BLOCK_J=2, HAS_COND=True, HAS_GBIAS=True, FORCED=False, RETURN_LOGITS=True, TOP_K=True, TOP_P=True)
    for arch in (80, 90):
        for wdtype in ("fp32", "bf16"):
            names = tw._step.arg_names
            sig = {n: "constexpr" if n in CONST else "*i64" if n in INT64 else "*fp64" if n in FP64
                   else f"*{wdtype}" if n in WEIGHTS else "*fp32" if n.endswith("_ptr") else "i32" for n in names}
            src = ASTSource(fn=tw._step, signature=sig, constexprs={(names.index(k),): v for k, v in CONST.items()})
            kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32))
            assert kernel.asm["cubin"], (arch, wdtype)
            print("compiled", arch, wdtype)
""")


@pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")
def test_triton_decode_compiles_for_sm80_and_sm90():
    """The GPU code path is at least compiled: Triton -> PTX -> cubin with its bundled ptxas, no GPU needed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter does not compile
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("Triton's CUDA backend has no ptxas here")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("compiled") == 4
