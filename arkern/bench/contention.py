"""Fused sampling on a busy machine: samples/s at 1 and 2 threads, alone and next to a busy process.

    python -m arkern.bench.contention [--seconds 3] [--pin] [--cases NAME ...]

The competitor is a second Python process spinning in ``while True: pass`` (pinned to CPU 0 with --pin). On
a 2-core machine it holds one core, so a 2-thread team must not wait on a peer that the scheduler has
descheduled: the figure that matters is the 2-thread / 1-thread ratio under load, which must stay >= 1.
Every configuration is timed in the same process, alternating, and the best of several runs is kept.
The decode team (csrc/cpu/team.h) switches itself off while it is slower than the caller alone; set
ARKERN_TEAM=always to time the team without that switch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch

from arkern.families import draw_noise
from arkern.models import PixelCNN, PixelCNNpp, WaveNet
from arkern.models.pixelcnn_packing import pack_pixelcnn
from arkern.models.wavenet import pack_wavenet
from arkern.ops.pixelcnn_decode import pixelcnn_generate
from arkern.ops.wavenet_decode import wavenet_generate
from arkern.sampling import sample_image


def _wavenet(batch: int, steps: int, dtype: torch.dtype = torch.float32) -> tuple[Callable[[], None], int]:
    torch.manual_seed(0)
    model = WaveNet(skip_channels=128).eval()  # nv-wavenet "medium": L=20, R=64, A=256
    packed = pack_wavenet(model, dtype)
    noise = torch.rand(batch, steps, dtype=torch.float64)

    def run() -> None:
        rings = [torch.zeros(batch, d, packed.residual_channels).transpose(1, 2) for d in packed.dilations]
        prev = torch.full((batch, 2), packed.num_classes // 2, dtype=torch.int64)
        wavenet_generate(packed, rings, prev, 0, noise)

    return run, batch * steps


def _pixelcnn(batch: int, size: int) -> tuple[Callable[[], None], int]:
    torch.manual_seed(0)
    model = PixelCNN(image_channels=1, num_classes=256, hidden_channels=128, num_blocks=3).eval()
    packed = pack_pixelcnn(model)
    noise = torch.rand(batch, 1, size, size, dtype=torch.float64)

    def run() -> None:
        image = torch.zeros(batch, 1, size, size, dtype=torch.int64)
        pixelcnn_generate(packed, packed.new_caches(batch, size, size), image, noise)

    return run, batch * size * size


def _pixelcnnpp(batch: int, size: int) -> tuple[Callable[[], None], int]:
    torch.manual_seed(0)
    model = PixelCNNpp(image_channels=3, filters=160, num_resnets=1, num_mixtures=10).eval()
    noise = draw_noise(model, batch, (size, size), seed=0)

    def run() -> None:
        sample_image(model, batch, shape=(size, size), method="fused", noise=noise)

    return run, batch * size * size


CASES = {
    "WaveNet medium B=1 fp32 (samples/s)": lambda: _wavenet(1, 1000),
    "WaveNet medium B=1 bf16 (samples/s)": lambda: _wavenet(1, 1000, torch.bfloat16),
    "WaveNet medium B=4 fp32 (samples/s)": lambda: _wavenet(4, 400),
    "WaveNet medium B=4 bf16 (samples/s)": lambda: _wavenet(4, 400, torch.bfloat16),
    "PixelCNN C=128 B=1 16x16 fp32 (pixels/s)": lambda: _pixelcnn(1, 16),
    "PixelCNN C=128 B=4 16x16 fp32 (pixels/s)": lambda: _pixelcnn(4, 16),
    "PixelCNNpp f=160 R=1 B=1 8x8 fp32 (pixels/s)": lambda: _pixelcnnpp(1, 8),
}


def _rate(run: Callable[[], None], items: int, threads: int, seconds: float) -> float:
    torch.set_num_threads(threads)
    run()  # warm-up (packing caches, thread pool start)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        run()
        best = max(best, items / (time.perf_counter() - t0))
    return best


@contextlib.contextmanager
def busy_process(pin: bool = False) -> Iterator[subprocess.Popen]:
    """A second process spinning on one core (CPU 0 when `pin`) while the block runs."""
    code = "import os,sys\nif sys.argv[1] == '1': os.sched_setaffinity(0, {0})\nwhile True: pass\n"
    proc = subprocess.Popen([sys.executable, "-c", code, "1" if pin else "0"])
    try:
        time.sleep(0.2)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="timing budget per configuration")
    p.add_argument("--pin", action="store_true", help="pin the competing busy process to CPU 0")
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = p.parse_args(argv)
    where = "pinned to CPU 0" if args.pin else "unpinned"
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, competing busy process {where}")
    team = os.environ.get("ARKERN_TEAM", "auto")
    print(f"decode team: {team}")
    print(f"{'case':46s} {'1 thr':>9s} {'2 thr':>9s} {'2/1':>6s} {'1 thr+busy':>11s} {'2 thr+busy':>11s} "
          f"{'2/1 busy':>9s}")
    for name in args.cases:
        run, items = CASES[name]()
        idle = [_rate(run, items, t, args.seconds) for t in (1, 2)]
        with busy_process(args.pin):
            busy = [_rate(run, items, t, args.seconds) for t in (1, 2)]
        print(f"{name:46s} {idle[0]:9.0f} {idle[1]:9.0f} {idle[1] / idle[0]:6.2f} {busy[0]:11.0f} {busy[1]:11.0f} "
              f"{busy[1] / busy[0]:9.2f}", flush=True)


if __name__ == "__main__":
    main()
