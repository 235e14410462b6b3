"""The `arkern` command.

    arkern sample MODEL [--n N] [--label L] [--shape H W] [--seconds S] [--out PATH] [--method M] [--seed N]
                        [--temperature T] [--top-k K] [--top-p P] [--threads N] [--no-progress]
                        [--class-rows] [--compare [--compare-n N]] [--distributed]
    arkern train {digits,tones,mnist,mnist-unconditional} [--out DIR] [--epochs N] [--seed N] [--threads N]
                 [--no-progress]
    arkern eval MODEL [--data NAME|PATH] [--batch N] [--threads N] [--no-progress]
    arkern bench [--quick] [--json PATH] [--plot PATH] [--threads 1 2] [--families NAME ...]
    arkern convert --source NAME CHECKPOINT [--config KEY=VALUE ...] --out DIR

MODEL is a bundled model ("mnist", "digits", "tones") or a checkpoint (.json / .safetensors, see
:mod:`arkern.pretrained`). Image models write a PNG grid, audio models a 16-bit WAV. Bad arguments exit
with code 2 and a message.

Under torchrun, ``--distributed`` splits the batch over the processes (:mod:`arkern.distributed`); use
``--num-samples`` (or ``-n``) there instead of ``--n``, which torchrun's own parser takes for an
abbreviation of its options: ``torchrun --nproc_per_node=2 -m arkern sample digits --num-samples 64
--seed 0 --distributed``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence

import torch

from arkern.decode.methods import METHODS
from arkern.distributions import MIN_TEMPERATURE
from arkern.families import ModelFamily, family_of

MAX_GRID_BYTES = 1 << 32  # a PNG grid larger than 4 GiB is surely a typo in --n or --scale


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arkern", description="Fast masked/causal convolutions and sampling.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="sample a bundled or saved model to a PNG grid (images) or a WAV (audio)",
                       description="Sample a model; prints the sampling speed. MODEL: mnist, digits, tones, or a "
                                   "checkpoint path (.json / .safetensors).")
    s.add_argument("model", metavar="MODEL", help="bundled model name (mnist, digits, tones) or checkpoint path")
    s.add_argument("--out", metavar="PATH", help="output file: .png for image models, .wav for audio models "
                                                 "(default: MODEL.png / MODEL.wav in the current directory)")
    s.add_argument("--n", "-n", "--num-samples", dest="n", type=int, default=None,
                   help="number of images (default 64) or audio clips (default 1)")
    s.add_argument("--label", type=int, help="class label for class-conditional image models "
                                             "(default: labels 0, 1, 2, ... one per grid column)")
    s.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"), help="image size (default: the model's)")
    s.add_argument("--class-rows", action="store_true",
                   help="class-conditional models: one row per class (labels 0, 0, ..., 1, 1, ...; default: one "
                        "column per class)")
    s.add_argument("--cols", type=int, help="images per row of the PNG grid")
    s.add_argument("--scale", type=int, help="PNG pixels per image pixel (default: images ~64 px wide)")
    s.add_argument("--seconds", type=float, help="audio length in seconds (default 2, or what --condition covers)")
    s.add_argument("--condition", metavar="FEATURES.npy",
                   help="audio models with local conditioning (vocoders): a (C, frames) or (N, C, frames) array, "
                        "e.g. a mel spectrogram, upsampled by the model's own network")
    s.add_argument("--speaker", type=int, help="speaker id of a model with a speaker embedding")
    s.add_argument("--method", choices=METHODS, help="sampler (default: the fastest available for the model)")
    s.add_argument("--bf16", action="store_true",
                   help="fused sampler in the bfloat16 precision (weights and every matrix input rounded to "
                        "bfloat16, float32 sums; AMX tiles where the CPU has them): faster, slightly different "
                        "samples than float32")
    s.add_argument("--seed", type=int, help="seed of the sampling noise (default: random, printed)")
    s.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1.0)")
    s.add_argument("--top-k", type=int, help="sample only among the k most likely classes")
    s.add_argument("--top-p", type=float, help="sample only from the nucleus of probability mass p, in (0, 1]")
    s.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--compare", action="store_true",
                   help="also time every available method (naive included) on a small batch with the same noise, "
                        "print the speedups and check that they draw the same samples")
    s.add_argument("--compare-n", type=int, default=4, metavar="N",
                   help="batch of the --compare runs (default 4; audio: 1/8 s each)")
    s.add_argument("--distributed", action="store_true",
                   help="split the batch over the processes of a torchrun launch (arkern.distributed)")

    t = sub.add_parser("train", help="train a bundled model's recipe and write NAME.json + NAME.safetensors",
                       description="Train a bundled model from scratch (the recipe that made the shipped "
                                   "weights; `--out arkern/pretrained` replaces them).")
    t.add_argument("recipe", choices=("digits", "tones", "mnist", "mnist-unconditional"),
                   help="which model (mnist-unconditional: the same-size baseline without labels)")
    t.add_argument("--out", metavar="DIR", default=".", help="output directory (default: current directory)")
    t.add_argument("--epochs", type=int, help="epochs (default: the recipe's)")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and data (default 0)")
    t.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="held-out negative log-likelihood of a model on a data set",
                       description="Negative log-likelihood (nats per item, bits per dimension) of MODEL on "
                                   "held-out data, from batched teacher-forced forwards.")
    e.add_argument("model", metavar="MODEL", help="bundled model name (mnist, digits, tones) or checkpoint path")
    e.add_argument("--data", default="mnist-test", metavar="NAME|PATH",
                   help="a data set name (mnist-test, mnist-train, mnist-test-256, mnist-train-256, digits-valid, "
                        "tones-valid; default mnist-test) or a .npy file of int items (images (N, C, H, W) or "
                        "sequences (N, T))")
    e.add_argument("--batch", type=int, default=100, help="items per forward (default 100)")
    e.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")

    b = sub.add_parser("bench", help="time every op's kernels against their baselines; print the ratio table")
    b.add_argument("--quick", action="store_true", help="fewer, smaller configurations and shorter timing")
    b.add_argument("--json", metavar="PATH", help="write the measurements as JSON")
    b.add_argument("--plot", metavar="PATH", help="draw a PNG of the speedups (needs matplotlib)")
    b.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts (default 1 2)")
    b.add_argument("--families", nargs="+", metavar="NAME", help="only these op families / models")

    c = sub.add_parser("convert", help="convert another project's checkpoint into an arkern checkpoint",
                       description="Read CHECKPOINT (torch.load with weights_only=True: never code) in the layout "
                                   "of --source, with the upstream constructor's arguments as --config KEY=VALUE, "
                                   "and write DIR/model.json + DIR/model.safetensors (then `arkern sample DIR`).")
    c.add_argument("checkpoint", metavar="CHECKPOINT", help="the upstream checkpoint file (.pth, .pt, .pkl ...)")
    c.add_argument("--source", required=True, help="the upstream project's layout (see arkern.convert.sources())")
    c.add_argument("--config", action="append", metavar="KEY=VALUE",
                   help="an upstream constructor argument (repeat; values are Python/JSON literals)")
    c.add_argument("--out", required=True, metavar="DIR", help="output directory")
    # so errors show the subcommand's usage
    p.subcommands = {"sample": s, "train": t, "eval": e, "bench": b, "convert": c}
    return p


# ---------------------------------------------------------------- images

def image_grid(images: torch.Tensor, levels: int, *, cols: int | None = None, scale: int = 1, pad: int = 1):
    """(N, C, H, W) int levels in [0, levels) -> a PIL image grid (grey for C = 1, RGB for C = 3).

    Levels map linearly to 0..255; each image pixel becomes scale x scale pixels; cells are separated by
    `pad` image pixels of dark grey.
    """
    from PIL import Image

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image_grid: images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pixels = (images.to(torch.float64) * (255.0 / (levels - 1))).round().clamp(0, 255).to(torch.uint8)
    grid = torch.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 48, dtype=torch.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = pixels[k]
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    if c == 1:
        return Image.fromarray(grid[0].numpy(), mode="L")
    return Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def save_image_grid(path: str, images: torch.Tensor, levels: int, **kwargs: int | None) -> None:
    """Write :func:`image_grid` of (N, C, H, W) int levels as a PNG."""
    image_grid(images, levels, **kwargs).save(path, format="PNG")


# ---------------------------------------------------------------- sample

def _check_sample_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.n is not None and args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    if not (MIN_TEMPERATURE <= args.temperature and math.isfinite(args.temperature)):
        parser.error(f"--temperature must be a finite number >= {MIN_TEMPERATURE:g}, got {args.temperature}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        parser.error(f"--seed must be in [0, 2**64), got {args.seed}")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.seconds is not None and not (args.seconds > 0 and math.isfinite(args.seconds)):
        parser.error(f"--seconds must be > 0, got {args.seconds}")
    for name in ("cols", "scale", "compare_n"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.shape is not None and min(args.shape) < 1:
        parser.error(f"--shape must be two ints >= 1, got {args.shape}")


def _check_out(path: str, parser: argparse.ArgumentParser) -> None:
    """--out, before any sampling: not a directory, in a folder that exists or can be made, writable."""
    if os.path.isdir(path):
        parser.error(f"--out: {path!r} is a directory; name the output file")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        parser.error(f"--out: cannot create {path!r}: {existing!r} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"--out: cannot write into {existing!r} (permission denied)")
    if existing == folder:  # the folder exists: open the file as the write will (append mode truncates nothing)
        existed = os.path.exists(path)
        try:
            with open(path, "ab"):
                pass
        except OSError as e:
            parser.error(f"--out: cannot write {path!r}: {e.strerror}")
        if not existed:
            os.remove(path)


def _check_size_limits(model: torch.nn.Module, family: ModelFamily, n: int, size: object, flags: str,
                       parser: argparse.ArgumentParser) -> None:
    """Refuse a run that cannot fit in memory before drawing anything (e.g. --n 1000000000)."""
    from arkern.sampling import check_run_memory

    try:
        check_run_memory(tuple(family.noise_shape(model, n, size)), family.size_argument, "sample")
    except ValueError as e:
        parser.error(f"{flags}: {e}")


def _load(args: argparse.Namespace, parser: argparse.ArgumentParser) -> torch.nn.Module:
    from arkern.pretrained import load

    try:
        return load(args.model)
    except (FileNotFoundError, ValueError) as e:
        parser.error(f"MODEL: {e}")


def _pick_method(model: torch.nn.Module, family: ModelFamily, method: str | None,
                 parser: argparse.ArgumentParser) -> str:
    available = family.methods(model)
    if method is None:
        return available[0]
    if method not in available:
        reason = family.method_reasons(model).get(method)
        parser.error(f"--method {method}: not available for {type(model).__name__} in this build "
                     f"({f'{reason}; ' if reason else ''}available: {', '.join(available)})")
    return method


def _precision(model: torch.nn.Module, family: ModelFamily, method: str, args: argparse.Namespace,
               parser: argparse.ArgumentParser) -> dict:
    """--bf16 -> the fused sampler's weight_dtype option (checked: the method is fused and the family has it)."""
    if not args.bf16:
        return {}
    if method != "fused":
        parser.error(f"--bf16 is an option of the fused sampler; --method is {method!r}")
    if torch.bfloat16 not in family.fused_weight_dtypes(model):
        parser.error(f"--bf16: the fused sampler of {type(model).__name__} has no bfloat16 precision")
    return {"weight_dtype": torch.bfloat16}


def _run(model: torch.nn.Module, batch: int, args: argparse.Namespace, parser: argparse.ArgumentParser,
         **kwargs: object) -> tuple[torch.Tensor | None, float]:
    """Sample (locally or with arkern.distributed) and time it -> (samples or None off rank 0, seconds)."""
    from arkern.distributed import TORCHRUN_ENV, generate_distributed, init_process_group_from_env
    from arkern.sampling import generate

    kwargs.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                  progress=not args.no_progress)
    if args.distributed:
        missing = [name for name in TORCHRUN_ENV if name not in os.environ]
        if missing:
            parser.error(f"--distributed: start the command with torchrun, e.g. `torchrun --nproc_per_node=2 -m "
                         f"arkern sample ... --distributed` ({', '.join(missing)} not set)")
        import torch.distributed as dist

        created = init_process_group_from_env(next(model.parameters()).device)
        start = time.perf_counter()
        out = generate_distributed(model, batch, **kwargs)
        seconds = time.perf_counter() - start
        if created:  # on success only: after a failed peer, tearing down could wait on it
            dist.destroy_process_group()  # else gloo's threads may abort the process at exit
        return out, seconds
    else:
        start = time.perf_counter()
        out = generate(model, batch, **kwargs)
    return out, time.perf_counter() - start


def _where() -> str:
    """Where the timing ran: intra-op threads, and the processes of a torchrun launch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"threads={torch.get_num_threads()}" + (f" x {world} processes" if world > 1 else "")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _compare(model: torch.nn.Module, args: argparse.Namespace, unit: str, per_item: int, what: str,
             **kwargs: object) -> None:
    """Time every available method on the same batch and noise; print samples/s and the speedup vs naive."""
    from arkern.sampling import generate

    batch = args.compare_n
    seed = 0 if args.seed is None else args.seed  # every method must see the same noise
    times, outs = {}, {}
    for method in family_of(model).methods(model):
        start = time.perf_counter()
        outs[method] = generate(model, batch, method=method, seed=seed, temperature=args.temperature,
                                       top_k=args.top_k, top_p=args.top_p, progress=False, **kwargs)
        times[method] = time.perf_counter() - start
    print(f"speed of every method on the same {batch} {unit} {what} ({_where()}):")
    base = times.get("naive")
    for method, seconds in times.items():
        ratio = f"  {base / seconds:7.1f}x naive" if base else ""
        print(f"  {method:7s} {seconds:8.3f} s  {batch / seconds:10.1f} {unit}/s  "
              f"{batch * per_item / seconds:10.0f} samples/s{ratio}")
    reference = next(iter(outs.values()))
    same = all(torch.equal(reference, out) for out in outs.values())
    print("  all methods drew identical samples" if same else "  WARNING: the methods drew different samples")


def _sample_image(model: torch.nn.Module, family: ModelFamily, args: argparse.Namespace,
                  parser: argparse.ArgumentParser) -> int:
    meta = model.meta
    if args.seconds is not None:
        parser.error("--seconds applies to audio models; this is an image model (use --n, --shape)")
    if args.condition is not None or args.speaker is not None:
        parser.error("--condition/--speaker apply to audio models; this is an image model")
    shape = tuple(args.shape) if args.shape else tuple(meta.get("shape") or ())
    if len(shape) != 2:
        parser.error("--shape H W is needed: the model's config gives no image size")
    n = args.n or 64
    try:
        family.check_size(model, shape)
    except ValueError as e:
        parser.error(f"--shape: {e}")
    _check_size_limits(model, family, n, shape, "--n/--shape", parser)  # before any per-image list is built
    num_labels = family.num_labels(model)
    condition, cols = None, args.cols
    if num_labels:
        if args.label is not None and not 0 <= args.label < num_labels:
            parser.error(f"--label must be in [0, {num_labels}), got {args.label}")
        if args.label is not None and args.class_rows:
            parser.error("--class-rows draws every class; it cannot be combined with --label")
        if args.class_rows:
            per_class = math.ceil(n / num_labels)
            condition, cols = [min(k // per_class, num_labels - 1) for k in range(n)], cols or per_class
        else:
            condition = args.label if args.label is not None else [k % num_labels for k in range(n)]
            cols = cols or (num_labels if args.label is None else None)
    elif args.label is not None or args.class_rows:
        parser.error(f"--{'label' if args.label is not None else 'class-rows'}: {type(model).__name__} "
                     f"{meta.get('name', '')} is not class-conditional")
    method = _pick_method(model, family, args.method, parser)
    out = args.out or f"{meta.get('name', 'samples')}.png"
    if not out.lower().endswith(".png"):
        parser.error(f"--out: image models write a PNG; the path must end in .png, got {out!r}")
    h, w = shape
    scale = args.scale or max(1, 64 // max(h, w))
    grid_cols = cols or math.ceil(math.sqrt(n))
    grid_bytes = (math.ceil(n / grid_cols) * (h + 1) + 1) * (grid_cols * (w + 1) + 1) * scale**2 * 3
    if grid_bytes > MAX_GRID_BYTES:
        parser.error(f"--n/--shape/--scale: a grid of {n} images of {h}x{w} at scale {scale} needs "
                     f"{grid_bytes / 2**30:.3g} GiB, over the {MAX_GRID_BYTES / 2**30:.0f} GiB limit of a PNG grid")
    if _is_main_process():
        _check_out(out, parser)
    images, seconds = _run(model, n, args, parser, shape=shape, method=method, condition=condition,
                           **_precision(model, family, method, args, parser))
    if images is None or not _is_main_process():
        return 0
    if images.dim() == 3:  # a code prior's (N, H, W) grids, drawn as one-channel images
        images = images[:, None]
    print(f"{meta.get('name', type(model).__name__)}: {n} images {h}x{w} with method={method} in {seconds:.3f} s "
          f"({_where()}): {n / seconds:.1f} images/s, "
          f"{n * h * w * images.shape[1] / seconds:.0f} samples/s")
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    save_image_grid(out, images.cpu(), model.num_classes, cols=cols, scale=scale)
    print(f"wrote {out}")
    if args.compare:
        labels = None if condition is None else (condition if isinstance(condition, int) else
                                                 [k % num_labels for k in range(args.compare_n)])
        _compare(model, args, "images", h * w * images.shape[1], f"of {h}x{w}", shape=shape, condition=labels)
    return 0


def _audio_condition(model: torch.nn.Module, args: argparse.Namespace, n: int,
                     parser: argparse.ArgumentParser) -> tuple[dict | None, int | None]:
    """--condition / --speaker -> (the condition dict or None, samples the local features cover or None)."""
    cfg = getattr(model, "config", None)
    wants_local, wants_global = bool(getattr(cfg, "cond_channels", 0)), bool(getattr(cfg, "global_channels", 0))
    if args.condition is None and wants_local:
        parser.error(f"--condition FEATURES.npy is needed: the model is conditioned on ({cfg.cond_channels}, frames) "
                     f"features")
    if args.condition is not None and not wants_local:
        parser.error("--condition: the model has no local conditioning")
    if args.speaker is not None and not getattr(cfg, "speakers", 0):
        parser.error("--speaker: the model has no speaker embedding")
    if wants_global and args.speaker is None:
        parser.error("--speaker ID is needed: the model is conditioned on a speaker"
                     if getattr(cfg, "speakers", 0) else "the model needs a global conditioning vector, which the "
                     "command line does not supply")
    if args.speaker is not None and not 0 <= args.speaker < cfg.speakers:
        parser.error(f"--speaker: speaker id out of range: {args.speaker}, the model has {cfg.speakers} speakers "
                     f"[0, {cfg.speakers - 1}]")
    condition: dict = {}
    covered = None
    if args.condition is not None:
        import numpy as np

        try:
            feats = torch.from_numpy(np.load(args.condition, allow_pickle=False)).to(torch.float32)
        except (OSError, ValueError) as err:
            parser.error(f"--condition: cannot read {args.condition!r} as a .npy array ({err})")
        if feats.dim() == 2:
            feats = feats.unsqueeze(0).expand(n, -1, -1)
        if feats.dim() != 3 or feats.shape[1] != cfg.cond_channels:
            parser.error(f"--condition: expected ({cfg.cond_channels}, frames) or (N, {cfg.cond_channels}, frames) "
                         f"features, got {tuple(feats.shape)}")
        condition["local"] = feats.contiguous()
        up = model.upsampler
        covered = up.samples_available(feats.shape[2]) if cfg.upsample != "nearest" else feats.shape[2] * cfg.hop
    if args.speaker is not None:
        rows = len(condition["local"]) if "local" in condition else n
        condition["global"] = torch.full((rows,), args.speaker, dtype=torch.int64)
    return (condition or None), covered


def _sample_audio(model: torch.nn.Module, family: ModelFamily, args: argparse.Namespace,
                  parser: argparse.ArgumentParser) -> int:
    from arkern.audio import mulaw_decode, write_wav

    meta = model.meta
    if args.class_rows:
        parser.error("--class-rows applies to class-conditional image models; this is an audio model")
    for name in ("label", "shape", "cols", "scale"):
        if getattr(args, name) is not None:
            parser.error(f"--{name} applies to image models; this is an audio model (use --seconds, --n)")
    rate = meta.get("sample_rate")
    if not isinstance(rate, int) or rate < 1:
        parser.error("MODEL: the model's config gives no audio sample_rate")
    n = args.n or 1
    condition, covered = _audio_condition(model, args, n, parser)
    n = n if condition is None else len(condition.get("local", condition.get("global")))
    length = max(1, round((args.seconds or 2.0) * rate)) if args.seconds or covered is None else covered
    method = _pick_method(model, family, args.method, parser)
    if condition is not None:
        try:
            model.check_local(condition.get("local"), n, length)
        except ValueError as err:
            parser.error(f"--condition: {err}")
    out = args.out or f"{meta.get('name', 'samples')}.wav"
    if not out.lower().endswith(".wav"):
        parser.error(f"--out: audio models write a WAV; the path must end in .wav, got {out!r}")
    _check_size_limits(model, family, n, length, "--n/--seconds", parser)
    if _is_main_process():
        _check_out(out, parser)
    extra = {} if condition is None else {"condition": condition}
    extra.update(_precision(model, family, method, args, parser))
    samples, seconds = _run(model, n, args, parser, length=length, method=method, **extra)
    if samples is None or not _is_main_process():
        return 0
    print(f"{meta.get('name', type(model).__name__)}: {n} x {length} samples ({length / rate:.2f} s at {rate} Hz) "
          f"with method={method} in {seconds:.3f} s ({_where()}): "
          f"{n * length / seconds:.0f} samples/s ({n * length / rate / seconds:.2f}x real time)")
    samples = samples.cpu()
    audio = samples.float() if samples.is_floating_point() else mulaw_decode(samples, model.config.num_classes)
    gap = torch.zeros(n, rate // 4)  # clips one after another, a quarter second apart
    clip = torch.cat([audio, gap], 1).reshape(-1)[: n * (length + rate // 4) - rate // 4]
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    write_wav(out, clip, sample_rate=rate)
    print(f"wrote {out}")
    if args.compare:
        short = min(length, max(1, rate // 8))
        _compare(model, args, "clips", short, f"of {short} samples", length=short)
    return 0


def _sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_sample_args(args, parser)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.seed is None and not args.distributed:  # distributed: rank 0 draws the noise and broadcasts it
        args.seed = int(torch.randint(0, 2**31 - 1, (1,)))
        print(f"seed {args.seed} (pass --seed {args.seed} to reproduce)")
    model = _load(args, parser)
    family = family_of(model)
    # sequence families are audio (μ-law classes at the model's sample_rate); image families write a PNG
    if family.size_argument == "length":
        return _sample_audio(model, family, args, parser)
    return _sample_image(model, family, args, parser)


# ---------------------------------------------------------------- train, bench

def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    from arkern.training import train

    try:
        train(args.recipe, args.out, epochs=args.epochs, seed=args.seed, threads=args.threads,
              progress=not args.no_progress, log=lambda line: print(line, flush=True))
    except ImportError as e:
        print(f"arkern train: {e}", file=sys.stderr)
        return 1
    return 0


def _eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from arkern.datasets import NAMES
    from arkern.evaluation import evaluate

    data: object = args.data
    if args.data not in NAMES:
        if not args.data.endswith(".npy"):
            parser.error(f"--data: {args.data!r} is neither a data set name ({', '.join(NAMES)}) nor a "
                         f".npy file")
        import numpy as np

        try:
            data = torch.from_numpy(np.load(args.data, allow_pickle=False))
        except (OSError, ValueError) as err:
            parser.error(f"--data: cannot read {args.data}: {err}")
    model = _load(args, parser)
    start = time.perf_counter()
    try:
        result = evaluate(model, data, batch=args.batch, progress=not args.no_progress)
    except ImportError as err:
        print(f"arkern eval: {err}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as err:
        parser.error(f"--data: {err}")
    seconds = time.perf_counter() - start
    print(f"{model.meta.get('name', type(model).__name__)} on {args.data}: {result['count']} items, "
          f"{'class-conditional' if result['conditional'] else 'unconditional'}: NLL {result['nll_nats']:.2f} "
          f"nats per item, {result['bits_per_dim']:.4f} bits/dim ({result['dims']} dims; batch {args.batch}, "
          f"{_where()}, {seconds:.1f} s)")
    return 0


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from arkern.bench import FAMILIES, run_report

    families = args.families or list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"--families: unknown {unknown}; choose from {list(FAMILIES)}")
    if any(t < 1 for t in args.threads):
        parser.error("--threads: thread counts must be >= 1")
    for path in (args.json, args.plot):
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    run_report(families, quick=args.quick, threads=args.threads, json_path=args.json, plot_path=args.plot)
    if args.json:
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _convert(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from arkern import convert
    from arkern.pretrained import save

    if args.source not in convert.SOURCES:
        parser.error(f"--source: unknown {args.source!r}; choose from {list(convert.sources())}")
    try:
        config = convert.parse_config(args.config)
    except ValueError as err:
        parser.error(str(err))
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out: {args.out!r} is a file; name a directory")
    try:
        model = convert.load(args.checkpoint, args.source, **config)
    except FileNotFoundError as err:
        parser.error(f"CHECKPOINT: {err}")
    except TypeError as err:  # an argument the upstream constructor does not take
        parser.error(f"--config: {err}")
    except ValueError as err:
        print(f"arkern convert: {err}", file=sys.stderr)
        return 1
    json_path, weights_path = save(model, os.path.join(args.out, "model"), meta=model.meta)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {json_path} and {weights_path} ({type(model).__name__}, {params:,} parameters, from "
          f"{args.source})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `arkern` console script; returns the exit code (2 for bad arguments)."""
    parser = _parser()
    args = parser.parse_args(argv)
    sub = parser.subcommands[args.command]
    commands = {"sample": _sample, "train": _train, "eval": _eval, "bench": _bench, "convert": _convert}
    return commands[args.command](args, sub)


if __name__ == "__main__":
    sys.exit(main())
