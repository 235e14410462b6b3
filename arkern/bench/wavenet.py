"""Benchmark cases for WaveNet sampling: fused C++ kernel vs cached (arkern ops) vs the PyTorch-eager cached
step vs naive, plus the roofline (one torch.mv / torch.mm pass over the same total weights per sample).

Every provider of a case produces the same number of samples per call (batch × steps), so items/s is
samples/s and the ratios in one table are measured in the same run. The baseline is the eager cached step.
Naive costs grow with the position; it runs the first `steps` samples only (a short run, flattering it).
Where naive runs, so does "reference": the fused op's plain-PyTorch reference backend on the same packed weights.
"""

from __future__ import annotations

import torch

from arkern.bench.harness import Case
from arkern.decode import wavenet as dw
from arkern.distributions import sample_categorical
from arkern.families import family_of
from arkern.models import WaveNet
from arkern.ops.wavenet_decode import matrix_elements, wavenet_generate


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _roofline(model: WaveNet, batch: int, dtype: torch.dtype, steps: int):
    """One pass over a matrix with as many elements as the packed weights, per sample (batch columns)."""
    packed = family_of(model).pack(model, weight_dtype=dtype)
    n = 256
    w = torch.randn(matrix_elements(packed) // n, n).to(dtype)
    if batch == 1:
        x = torch.randn(n).to(dtype)
        return lambda: [torch.mv(w, x) for _ in range(steps)]
    xb = torch.randn(n, batch).to(dtype)
    return lambda: [torch.mm(w, xb) for _ in range(steps)]


def wavenet_case(batch: int, dtype: torch.dtype = torch.float32, *, skip_channels: int = 128,
                 steps: int = 64, fused_steps: int | None = None, naive: bool = False) -> Case:
    """nv-wavenet medium (L=20, R=64, A=256, max_dilation 512) with `skip_channels`, `batch` rows."""
    name = f"medium S={skip_channels} B={batch} {_dtype_name(dtype)}"

    def setup():
        torch.manual_seed(0)
        model = WaveNet(skip_channels=skip_channels).eval()
        packed = family_of(model).pack(model, weight_dtype=dtype)
        noise = torch.rand(batch, steps, dtype=torch.float64)
        fused_state = dw.WaveNetState.new(model, batch, dtype=torch.float32)
        cached_state = dw.WaveNetState.new(model, batch)
        eager_state = dw.WaveNetState.new(model, batch)
        arkern_step, eager_step = dw.WaveNetStepper(model, "arkern"), dw.WaveNetStepper(model, "eager")

        def fused():
            ys, _ = wavenet_generate(packed, fused_state.rings, fused_state.prev, fused_state.t, noise)
            fused_state.t += steps
            return ys

        def stepped(stepper, state):
            def run():
                with torch.no_grad():
                    for s in range(steps):
                        logits = stepper.step(state)
                        stepper.push(state, sample_categorical(logits, noise[:, s]))
            return run

        fns = {"eager": stepped(eager_step, eager_state), "fused": fused,
               "roofline": _roofline(model, batch, dtype, steps)}
        if dtype == torch.float32:  # the Python-driven samplers do not use packed bf16 weights
            fns["cached"] = stepped(arkern_step, cached_state)
        if naive:
            fns["naive"] = lambda: dw.sample(model, noise, method="naive")
            ref_state = dw.WaveNetState.new(model, batch, dtype=torch.float32)

            def reference():  # the op's readable reference on the same packed weights
                ys, _ = wavenet_generate(packed, ref_state.rings, ref_state.prev, ref_state.t, noise,
                                         backend="reference")
                ref_state.t += steps
                return ys

            fns["reference"] = reference
        return fns

    return Case("wavenet", name, setup, baseline="eager", items=batch * steps,
                params={"dtype": _dtype_name(dtype), "batch": batch, "skip_channels": skip_channels})


def cases(quick: bool = False) -> list[Case]:
    """Standard configurations: medium S=128 (and S=256), batch 1/4/16/64, float32 and bfloat16 weights."""
    if quick:
        return [wavenet_case(1, steps=32), wavenet_case(16, torch.bfloat16, steps=32)]
    out = [wavenet_case(1, steps=64, naive=True)]
    for skip in (128, 256):
        for dtype in (torch.float32, torch.bfloat16):
            for batch in (1, 4, 16, 64):
                if skip == 128 and dtype == torch.float32 and batch == 1:
                    continue
                out.append(wavenet_case(batch, dtype, skip_channels=skip, steps=64 if batch < 64 else 16))
    return out
