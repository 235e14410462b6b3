"""Benchmark cases for WaveNet sampling: fused C++ kernel vs cached (arkern ops) vs the PyTorch-eager cached
step vs naive, plus the roofline (one torch.mv / torch.mm pass over the same total weights per sample).

Every provider of a case produces the same number of samples per call (batch × steps), so items/s is
samples/s and the ratios in one table are measured in the same run. The baseline is the eager cached step.
Naive costs grow with the position; it runs the first `steps` samples only (a short run, flattering it).
Where naive runs, so does "reference": the fused op's plain-PyTorch reference backend on the same packed weights.
"""

from __future__ import annotations

import os

import torch

from arkern.backends import last_cpu_isa
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
                params={"dtype": _dtype_name(dtype), "batch": batch, "skip_channels": skip_channels},
                isa=lambda p: last_cpu_isa("wavenet_generate") if p == "fused" else None)


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


# ---------------------------------------------------------------- vocoders (the generalised family)

VOCODER = dict(out_channels=30, layers=24, stacks=4, residual_channels=64, gate_channels=128, skip_out_channels=64,
               kernel_size=3, cin_channels=80, upsample_conditional_features=True, upsample_scales=[4, 4, 4, 4],
               freq_axis_kernel_size=3, scalar_input=True)
LJSPEECH = dict(VOCODER, residual_channels=512, gate_channels=512, skip_out_channels=256)


def _vocoder(config: dict):
    """wavenet_vocoder's own module (random weights, generation-fast) and its arkern conversion."""
    import warnings

    from arkern import convert

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import wavenet_vocoder

        torch.manual_seed(0)
        upstream = wavenet_vocoder.WaveNet(**config).eval()
        model = convert.load(upstream.state_dict(), "wavenet_vocoder", **config, log_scale_min=-7.0,
                             num_classes=65536, sample_rate=22050)
        upstream.make_generation_fast_()
    return upstream, model


def vocoder_case(steps: int = 256) -> Case:
    """The vocoder-sized MoL model (24 layers, 4 stacks, 64/128/64, cin 80, upsampling 4·4·4·4), batch 1:
    arkern's fused sampler vs wavenet_vocoder's own incremental_forward (after make_generation_fast_())."""

    if steps % 256:
        raise ValueError(f"vocoder_case: steps must be a multiple of the hop 256 (upstream's incremental_forward "
                         f"samples exactly frames x hop), got {steps}")

    def setup():
        upstream, model = _vocoder(VOCODER)
        frames = steps // 256
        c = torch.rand(1, 80, frames)

        def fused():
            from arkern.sampling import generate

            return generate(model, 1, length=steps, condition=c, method="fused", seed=0, progress=False)

        def incremental():
            with torch.no_grad():
                return upstream.incremental_forward(c=c, T=steps, log_scale_min=-7.0)

        return {"wavenet_vocoder": incremental, "fused": fused}

    return Case("wavenet", f"vocoder MoL L=24 64/128/64 cin80 B=1 T={steps}", setup, baseline="wavenet_vocoder",
                items=steps, params={"dtype": "float32", "batch": 1, "model": "vocoder"})


def ljspeech_case(batch: int, steps: int = 16) -> Case:
    """The LJSpeech configuration (24 layers, 4 stacks, 512/512/256, cin 80, MoL): fused vs the cached eager
    step; samples/s, real-time factor = samples/s / 22050."""

    def setup():
        _, model = _vocoder(LJSPEECH)
        c = torch.rand(batch, 80, 1)
        cached_state = dw.WaveNetState.new(model, batch)
        stepper = dw.WaveNetStepper(model, "eager")
        noise = torch.rand(batch, steps, 2, dtype=torch.float64)
        local = model.local_window(c, 0, steps).contiguous()

        def fused():
            from arkern.sampling import generate

            return generate(model, batch, length=steps, condition=c, method="fused", seed=0, progress=False)

        def eager():
            from arkern import wavenet_heads as heads

            cached_state.cond, cached_state.cond_start, cached_state.t = local, 0, 0
            with torch.no_grad():
                for s in range(steps):
                    out = stepper.step(cached_state)
                    stepper.push(cached_state, heads.sample("logistic_mixture", out, noise[:, s], log_scale_min=-7))

        return {"eager": eager, "fused": fused}

    return Case("wavenet", f"LJSpeech MoL L=24 512/512/256 cin80 B={batch}", setup, baseline="eager",
                items=batch * steps, params={"dtype": "float32", "batch": batch, "model": "ljspeech"})


def vocoder_cases() -> list[Case]:
    """The issue-13 vocoder figures: fused vs wavenet_vocoder at batch 1; LJSpeech at batch 1 and 16."""
    return [vocoder_case(), ljspeech_case(1), ljspeech_case(16)]


def main(argv: list[str] | None = None) -> None:
    """``python -m arkern.bench.wavenet [--threads 1 2]``: the vocoder figures (samples/s, ratio to the case's
    baseline in the same run, real-time factor at 22.05 kHz)."""
    import argparse
    import platform

    from arkern.bench.harness import run_case

    parser = argparse.ArgumentParser(prog="python -m arkern.bench.wavenet", description=main.__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, float32 weights, "
          f"load average {os.getloadavg()[0]:.1f}")
    for case in vocoder_cases():
        for threads in args.threads:
            for m in run_case(case, threads, args.min_run_time):
                rtf = m.items_per_s / 22050 if m.items_per_s else float("nan")
                print(f"{case.name:48s} {threads}t {m.provider:16s} {m.seconds * 1e3:10.2f} ms/call "
                      f"{m.items_per_s:10.1f} samples/s  x{m.speedup:7.2f} vs {case.baseline}  RTF {rtf:.4f}")


if __name__ == "__main__":
    main()
