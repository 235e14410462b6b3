"""Fused sampling on a busy machine: samples/s at 1 and 2 threads, alone and next to a busy process.

    python -m arkern.bench.contention [--seconds 3] [--calls 15] [--pin] [--states idle busy] [--cases TEXT ...]

The competitor is a second Python process spinning in ``while True: pass`` (pinned to CPU 0 with --pin). On
a 2-core machine it holds one core, so a 2-thread team must not wait on a peer that the scheduler has
descheduled: the figure that matters is the 2-thread / 1-thread ratio under load, which must stay >= 1.
Both thread counts are timed in the same process, call by call alternating, on an idle(-ish) machine and
next to the busy process; the table gives the best and the median of the calls and the 2/1 ratios of each,
and the load average before and after (the machine's other load counts too).
The decode team (csrc/cpu/team.h) switches itself off while it is slower than the caller alone or its helper
misses deadlines; set ARKERN_TEAM=always to time the team without that switch. For the team's speed on an idle
machine when the machine is not, run at real-time priority (``chrt -f 10 python -m ... --states idle``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch

from arkern.backends import last_cpu_isa
from arkern.bench.harness import build_isa
from arkern.families import draw_noise
from arkern.models import PixelCNN, PixelCNNpp, WaveNet
from arkern.models.pixelcnn_packing import pack_pixelcnn
from arkern.models.wavenet import pack_wavenet
from arkern.ops.pixelcnn_decode import pixelcnn_generate
from arkern.ops.wavenet_decode import wavenet_generate
from arkern.sampling import sample_image

# A case: (prepare, items). prepare() allocates a fresh state (caches, rings) and returns the sampling call.
# The state is allocated untimed and on one thread: torch's parallel fills wait on descheduled pool threads,
# and its OpenMP pool threads spin for a while after every parallel region, taking a core from the sampler;
# neither is the sampler's speed.
Prepare = Callable[[], Callable[[], None]]


def _wavenet(batch: int, steps: int, dtype: torch.dtype = torch.float32) -> tuple[Prepare, int]:
    torch.manual_seed(0)
    model = WaveNet(skip_channels=128).eval()  # nv-wavenet "medium": L=20, R=64, A=256
    packed = pack_wavenet(model, dtype)
    noise = torch.rand(batch, steps, dtype=torch.float64)

    def prepare() -> Callable[[], None]:
        rings = [torch.zeros(batch, d, packed.residual_channels).transpose(1, 2) for d in packed.dilations]
        prev = torch.full((batch, 2), packed.num_classes // 2, dtype=torch.int64)
        return lambda: wavenet_generate(packed, rings, prev, 0, noise)

    return prepare, batch * steps


def _pixelcnn(batch: int, size: int) -> tuple[Prepare, int]:
    torch.manual_seed(0)
    model = PixelCNN(image_channels=1, num_classes=256, hidden_channels=128, num_blocks=3).eval()
    packed = pack_pixelcnn(model)
    noise = torch.rand(batch, 1, size, size, dtype=torch.float64)

    def prepare() -> Callable[[], None]:
        image = torch.zeros(batch, 1, size, size, dtype=torch.int64)
        caches = packed.new_caches(batch, size, size)
        return lambda: pixelcnn_generate(packed, caches, image, noise)

    return prepare, batch * size * size


def _pixelcnnpp(batch: int, size: int) -> tuple[Prepare, int]:
    torch.manual_seed(0)
    model = PixelCNNpp(image_channels=3, filters=160, num_resnets=1, num_mixtures=10).eval()
    noise = draw_noise(model, batch, (size, size), seed=0)

    def prepare() -> Callable[[], None]:  # the fused sampler allocates its (small, 8x8) state itself
        return lambda: sample_image(model, batch, shape=(size, size), method="fused", noise=noise)

    return prepare, batch * size * size


def _isa(name: str) -> str:
    """The instruction-set level the case's last call ran its products on (PixelCNN++: the build's)."""
    op = "wavenet_generate" if name.startswith("WaveNet") else "pixelcnn_generate" if "PixelCNN " in name else None
    return (last_cpu_isa(op) if op else None) or build_isa()


CASES = {
    "WaveNet medium B=1 fp32 (samples/s)": lambda: _wavenet(1, 1000),
    "WaveNet medium B=1 bf16 (samples/s)": lambda: _wavenet(1, 1000, torch.bfloat16),
    "WaveNet medium B=4 fp32 (samples/s)": lambda: _wavenet(4, 400),
    "WaveNet medium B=4 bf16 (samples/s)": lambda: _wavenet(4, 400, torch.bfloat16),
    "PixelCNN C=128 B=1 16x16 fp32 (pixels/s)": lambda: _pixelcnn(1, 16),
    "PixelCNN C=128 B=4 16x16 fp32 (pixels/s)": lambda: _pixelcnn(4, 16),
    "PixelCNNpp f=160 R=1 B=1 8x8 fp32 (pixels/s)": lambda: _pixelcnnpp(1, 8),
}


def _rates(prepare: Prepare, items: int, threads: tuple[int, ...], calls: int,
           seconds: float) -> dict[int, list[float]]:
    """Items/s of every call at each thread count, the counts alternating call by call (so that both see the
    same machine), for at least `calls` calls per count and at least `seconds` in all."""
    for n in threads:  # warm-up: packing caches, the team's threads, the rate memory
        torch.set_num_threads(n)
        prepare()()
    rates: dict[int, list[float]] = {n: [] for n in threads}
    end = time.perf_counter() + seconds
    old = torch.get_num_threads()
    try:
        while min(len(r) for r in rates.values()) < calls or time.perf_counter() < end:
            for n in threads:
                torch.set_num_threads(1)
                run = prepare()
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                run()
                rates[n].append(items / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(old)
    return rates


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


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="timing budget per case and machine state")
    p.add_argument("--calls", type=int, default=15, help="at least this many calls per thread count")
    p.add_argument("--pin", action="store_true", help="pin the competing busy process to CPU 0")
    p.add_argument("--states", nargs="+", default=["idle", "busy"], choices=["idle", "busy"],
                   help="machine states to time: as found (idle), next to the busy process (busy)")
    p.add_argument("--cases", nargs="*", default=[], metavar="TEXT",
                   help="only the cases whose name contains one of these (case-insensitive), e.g. 'B=4 bf16'")
    args = p.parse_args(argv)
    names = [n for n in CASES if not args.cases or any(c.lower() in n.lower() for c in args.cases)]
    if not names:
        p.error(f"--cases: no case matches {args.cases}; the cases are {list(CASES)}")
    where = "pinned to CPU 0" if args.pin else "unpinned"
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, competing busy process {where}, "
          f"decode team: {os.environ.get('ARKERN_TEAM', 'auto')}, {_load()}")
    print("items/s per call, 1 and 2 threads alternating; best and median of each, and the 2/1 ratios")
    states = args.states
    print(f"{'case':46s} {'machine':7s} {'1 best':>9s} {'1 med':>9s} {'2 best':>9s} {'2 med':>9s} "
          f"{'2/1 best':>8s} {'2/1 med':>8s} {'calls':>5s} {'isa':>6s}")
    for name in names:
        prepare, items = CASES[name]()
        for state in states:
            with busy_process(args.pin) if state == "busy" else contextlib.nullcontext():
                r = _rates(prepare, items, (1, 2), args.calls, args.seconds)
            best = {n: max(v) for n, v in r.items()}
            med = {n: statistics.median(v) for n, v in r.items()}
            print(f"{name:46s} {state:7s} {best[1]:9.0f} {med[1]:9.0f} {best[2]:9.0f} {med[2]:9.0f} "
                  f"{best[2] / best[1]:8.2f} {med[2] / med[1]:8.2f} {len(r[1]):5d} {_isa(name):>6s}", flush=True)
    print(_load())


if __name__ == "__main__":
    main()
