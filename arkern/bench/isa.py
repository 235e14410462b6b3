"""The fused samplers at each instruction-set level and precision, in one run: float32 at its best level
(the baseline), bfloat16 at avx512 and at amx, by batch size — the figures behind the AMX targets.

    python -m arkern.bench.isa [--quick] [--threads 1 2] [--families wavenet pixelcnn gated]
    arkern bench --families isa --plot isa.png

A provider "fp32" / "bf16" runs at the best available level, "bf16@avx512" (etc.) at a forced one; every
row says the level its products actually ran at (``arkern.backends.last_cpu_isa``). Levels this machine lacks
are left out. Each case also reports, once, the fraction of the bfloat16 sampler's samples identical to the
float32 sampler's for the same noise (:func:`identical_fraction`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from arkern.backends import cpu_isas, last_cpu_isa, set_cpu_isa
from arkern.bench.harness import Case, format_table, machine_info, run_case
from arkern.bench.pixelcnn import gated_c64, pixelcnn_c128
from arkern.decode import wavenet as dw
from arkern.distributions import sample_categorical
from arkern.families import family_of
from arkern.models import WaveNet
from arkern.ops.wavenet_decode import wavenet_generate
from arkern.sampling import generate


def _at(level: str | None, fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        set_cpu_isa(level)
        try:
            return fn()
        finally:
            set_cpu_isa(None)
    return run


def _levels() -> list[str]:
    """The forced levels worth timing for bfloat16: avx512 (the float32 tiles) and amx, where available."""
    return [lv for lv in ("avx512", "amx") if cpu_isas()[lv] is None]


def _providers(make: Callable[[torch.dtype], Callable[[], object]]) -> dict[str, Callable[[], object]]:
    fns = {"fp32": make(torch.float32)}
    for level in _levels():
        fns[f"bf16@{level}"] = _at(level, make(torch.bfloat16))
    return fns


def wavenet_case(batch: int, steps: int) -> Case:
    """nv-wavenet medium (L=20, R=64, S=128, A=256), `batch` rows, `steps` samples per call."""
    op = "wavenet_generate"

    def setup():
        torch.manual_seed(0)
        model = WaveNet().eval()
        noise = torch.rand(batch, steps, dtype=torch.float64)

        def make(dtype):
            packed = family_of(model).pack(model, weight_dtype=dtype)
            # the rings as the fused sampler keeps them on CPU (generate(method="fused")): each slot's rows contiguous
            state = dw.WaveNetState.new(model, batch, dtype=torch.float32, ring_storage="slots")

            def fused():
                ys, _ = wavenet_generate(packed, state.rings, state.prev, state.t, noise)
                state.t += steps
                return ys
            return fused
        return _providers(make)

    return Case("isa", f"wavenet medium B={batch}", setup, baseline="fp32", items=batch * steps,
                params={"model": "wavenet medium", "batch": batch}, isa=lambda p: last_cpu_isa(op))


def image_case(label: str, model_fn: Callable[[], torch.nn.Module], batch: int, size: int) -> Case:
    """One fused image sampler (`size` × `size` grey images, `batch` of them per call)."""
    op = "pixelcnn_generate"

    def setup():
        torch.manual_seed(0)
        model = model_fn().eval()

        def make(dtype):
            return lambda: generate(model, batch, shape=(size, size), method="fused", weight_dtype=dtype, seed=0,
                                    progress=False)
        return _providers(make)

    return Case("isa", f"{label} {size}x{size} B={batch}", setup, baseline="fp32", items=batch,
                params={"model": label, "batch": batch, "unit": "images"}, isa=lambda p: last_cpu_isa(op))


def cases(quick: bool = False, families: tuple[str, ...] = ("wavenet", "pixelcnn", "gated")) -> list[Case]:
    """WaveNet medium at batch 1..64; PixelCNN C=128 and GatedPixelCNN h=64 32×32 (the models of
    :mod:`arkern.bench.pixelcnn`) at batch 16 and 64."""
    if quick:
        return [wavenet_case(16, 16)]
    out = []
    if "wavenet" in families:
        out += [wavenet_case(b, 64 if b < 64 else 32) for b in (1, 4, 16, 64)]
    if "pixelcnn" in families:
        out += [image_case("PixelCNN C=128 L=9", pixelcnn_c128, b, 32) for b in (16, 64)]
    if "gated" in families:
        out += [image_case("GatedPixelCNN h=64 L=5", gated_c64, b, 32) for b in (16, 64)]
    return out


def identical_fraction(batch: int = 16, steps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """How often the bfloat16 WaveNet medium sampler (random weights, `batch` × `steps`, one noise) draws what
    the float32 sampler draws: (fraction of identical samples when both run free — one differing draw changes
    the rest of its sequence —, fraction of identical draws when the bfloat16 network is fed the float32
    samples, i.e. per step)."""
    torch.manual_seed(seed)
    model = WaveNet().eval()
    noise = torch.rand(batch, steps, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    fp32, bf16 = (dw.sample(model, noise, method="fused", weight_dtype=dt) for dt in (torch.float32, torch.bfloat16))
    state = dw.WaveNetState.new(model, batch, dtype=torch.float32)
    _, logits = wavenet_generate(family_of(model).pack(model, weight_dtype=torch.bfloat16), state.rings, state.prev,
                                 0, noise, return_logits=True, forced=fp32)
    per_step = sample_categorical(logits, noise)
    return (fp32 == bf16).double().mean().item(), (per_step == fp32).double().mean().item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--families", nargs="+", default=["wavenet", "pixelcnn", "gated"])
    p.add_argument("--min-time", type=float, default=1.0)
    args = p.parse_args(argv)
    info = machine_info()
    print(f"machine: {info['cpu']} ({info['cores']} cores, {info['capability']}), torch {info['torch']}; "
          f"levels: {cpu_isas()}")
    for case in cases(args.quick, tuple(args.families)):
        for n in args.threads:
            print(format_table(run_case(case, n, args.min_time)).split("\n", 2)[2], flush=True)
    if "wavenet" in args.families:
        free, per_step = identical_fraction()
        print(f"WaveNet medium (random weights), bfloat16 vs float32 samples from the same noise: {free:.4f} "
              f"identical running free, {per_step:.4f} of the draws identical given the float32 history")


if __name__ == "__main__":
    main()
