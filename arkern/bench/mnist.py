"""The MNIST figures, measured in one run: ``python -m arkern.bench.mnist [--unconditional PATH] [--json PATH]``.

1. Held-out NLL (nats per image, the 500 test digits of :mod:`arkern.datasets`) of the bundled
   class-conditional model ``arkern.load("mnist")``, beside two baselines on the same split: independent
   per-pixel Bernoulli fitted on the 4,500 training digits (add-one smoothing), and the unconditional
   GatedPixelCNN of the same size and recipe (``arkern train mnist-unconditional``; pass its checkpoint).
2. Recognisability: a scikit-learn RBF-kernel SVM (default C and gamma) trained on the binarised training
   digits labels class-conditional samples (``--per-class`` per digit, fused sampler, seed 0, at each of
   ``--temperatures``, default 1);
   its own accuracy on the 500 real test digits is reported beside it.
3. Speed at ``--batch`` digits (default 100) and ``--threads`` (default 1): fused and cached sampling of the
   same digits under the same noise (identical samples checked), naive extrapolated from ``--naive-steps``
   full forwards at that batch (one forward per pixel: 784 per image batch), ratios from this run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch


def bernoulli_nll(train: torch.Tensor, test: torch.Tensor) -> float:
    """Mean NLL in nats per image of binary `test` (N, 1, H, W) under independent per-pixel Bernoullis with
    p = (ones + 1) / (N_train + 2) from binary `train`."""
    p = (train.to(torch.float64).sum(0) + 1.0) / (train.shape[0] + 2.0)
    x = test.to(torch.float64)
    log_lik = x * torch.log(p) + (1.0 - x) * torch.log1p(-p)
    return float(-log_lik.flatten(1).sum(1).mean())


def _features(images: torch.Tensor):
    return images.flatten(1).to(torch.float64).numpy()


@torch.no_grad()
def naive_seconds(model: torch.nn.Module, batch: int, labels: torch.Tensor, steps: int) -> float:
    """Seconds of the naive sampler for `batch` 28x28 images: `steps` full forwards (each what the naive
    sampler runs per pixel) timed, the fastest taken, times 784 pixels."""
    h, w = 28, 28
    xf = model.prepare(torch.zeros(batch, 1, h, w, dtype=torch.int64))
    u = torch.rand(batch, 1, dtype=torch.float64)
    best = math.inf
    for _ in range(steps):
        start = time.perf_counter()
        model.draw(model.output_map(xf, labels)[:, :, h // 2, w // 2], u, 0)
        best = min(best, time.perf_counter() - start)
    return best * h * w


def measure(unconditional: str | None, *, model_path: str = "mnist", per_class: int = 100, batch: int = 100,
            threads: int = 1, naive_steps: int = 3, seed: int = 0, temperatures: tuple[float, ...] = (1.0,),
            log=print) -> dict:
    """Run every measurement of this module's docstring; returns the figures as a dict."""
    from arkern.datasets import mnist
    from arkern.evaluation import evaluate
    from arkern.pretrained import load
    from arkern.sampling import generate

    torch.set_num_threads(threads)
    figures: dict = {"threads": threads, "batch": batch, "torch": torch.__version__, "machine": platform.machine(),
                     "dtype": "float32"}
    train_x, train_y = mnist("train")
    test_x, test_y = mnist("test")
    model = load(model_path)

    # 1. held-out NLL
    nll = {"bernoulli": bernoulli_nll(train_x, test_x)}
    nll["class-conditional (bundled)"] = evaluate(model, "mnist-test", batch=batch)["nll_nats"]
    if unconditional:
        nll["unconditional, same size"] = evaluate(load(unconditional), "mnist-test", batch=batch)["nll_nats"]
    figures["heldout_nll_nats"] = nll
    for name, value in nll.items():
        log(f"held-out NLL {name:28s} {value:7.2f} nats/image  ({value / (784 * math.log(2)):.4f} bits/dim)")
    log("context: PixelCNN (van den Oord et al. 2016) 81.30 nats on binarised MNIST, trained on 60,000 digits")

    # 2. recognisability of class-conditional samples
    from sklearn.svm import SVC
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):
        start = time.perf_counter()
        svm = SVC(kernel="rbf").fit(_features(train_x), train_y.numpy())
        real = float((torch.from_numpy(svm.predict(_features(test_x))) == test_y).double().mean())
        log(f"RBF SVM trained on the 4,500 binarised training digits ({time.perf_counter() - start:.0f} s): "
            f"{real:.3f} accuracy on the 500 real test digits")
        wanted = torch.arange(10).repeat_interleave(per_class)
        figures["svm_accuracy_real_test"] = real
        figures["svm_accuracy_samples"] = {}
        for temperature in temperatures:
            samples = []
            for s in range(0, len(wanted), batch):
                samples.append(generate(model, len(wanted[s:s + batch]), shape=(28, 28),
                                        condition=wanted[s:s + batch], seed=seed + s, method="fused",
                                        temperature=temperature, progress=False))
            predicted = torch.from_numpy(svm.predict(_features(torch.cat(samples))))
            per_digit = [float((predicted[wanted == d] == d).double().mean()) for d in range(10)]
            accuracy = float((predicted == wanted).double().mean())
            figures["svm_accuracy_samples"][str(temperature)] = {"all": accuracy, "per_digit": per_digit}
            log(f"samples recognised as the requested digit: {accuracy:.3f} ({per_class} per digit, seeds {seed}+, "
                f"temperature {temperature}); per digit: {' '.join(f'{a:.2f}' for a in per_digit)}")

    # 3. speed, one batch of `batch` digits, same noise for every method
    labels = torch.arange(batch) % 10
    noise = torch.rand(model.noise_shape(batch, 28, 28), dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))
    times, outs = {}, {}
    for method in ("fused", "cached"):
        start = time.perf_counter()
        outs[method] = generate(model, batch, shape=(28, 28), condition=labels, noise=noise, method=method,
                                progress=False)
        times[method] = time.perf_counter() - start
    times["naive (extrapolated)"] = naive_seconds(model, batch, labels, naive_steps)
    same = torch.equal(outs["fused"], outs["cached"])
    figures["seconds"] = times
    figures["images_per_s"] = {k: batch / v for k, v in times.items()}
    figures["fused_vs_naive"] = times["naive (extrapolated)"] / times["fused"]
    figures["fused_vs_cached"] = times["cached"] / times["fused"]
    figures["fused_equals_cached"] = same
    log(f"sampling {batch} digits 28x28 at batch {batch}, {threads} thread(s), float32:")
    for method, seconds in times.items():
        log(f"  {method:22s} {seconds:9.2f} s  {batch / seconds:9.2f} images/s  "
            f"{times['naive (extrapolated)'] / seconds:7.1f}x naive")
    log(f"  fused and cached drew {'identical' if same else 'DIFFERENT'} samples")
    return figures


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the figures (and write them as JSON with --json)."""
    p = argparse.ArgumentParser(prog="python -m arkern.bench.mnist", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist", help="the class-conditional model (default: the bundled mnist)")
    p.add_argument("--unconditional", metavar="PATH", help="checkpoint of `arkern train mnist-unconditional`")
    p.add_argument("--per-class", type=int, default=100, help="class-conditional samples per digit (default 100)")
    p.add_argument("--batch", type=int, default=100, help="sampling and evaluation batch (default 100)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--naive-steps", type=int, default=3, help="full forwards timed for naive (default 3)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0],
                   help="sampling temperatures of the recognisability samples (default 1.0)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = p.parse_args(argv)
    for name in ("per_class", "batch", "threads", "naive_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(not 0 < t < float("inf") for t in args.temperatures):
        p.error("--temperatures must be > 0")
    figures = measure(args.unconditional, model_path=args.model, per_class=args.per_class, batch=args.batch,
                      threads=args.threads, naive_steps=args.naive_steps, temperatures=tuple(args.temperatures),
                      log=lambda line: print(line, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
