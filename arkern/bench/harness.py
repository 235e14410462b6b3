"""Timing harness: cases, providers, threads, and the ratio table."""

from __future__ import annotations

import importlib
import json
import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.utils.benchmark as tbench

Providers = dict[str, Callable[[], object]]


@dataclass
class Case:
    """One benchmark configuration.

    family: op family or model ("masked_conv2d", "wavenet", ...).
    name: short description of the configuration (shapes, dtype).
    setup: builds the inputs and returns {provider name: zero-argument callable}; called once per run,
        so inputs are only allocated when the case runs.
    baseline: the provider every ratio is measured against.
    items: work items per call (e.g. samples generated), to report items/s; None for plain ops.
    params: the configuration as data (e.g. batch, dtype), kept with every measurement; "batch" puts the
        case on the samples/s-vs-batch plot.
    isa: provider -> the instruction-set level its row ran at, asked right after that provider was timed
        (e.g. ``arkern.backends.last_cpu_isa`` of the fused op); None: :func:`default_isa`.
    """

    family: str
    name: str
    setup: Callable[[], Providers]
    baseline: str = "reference"
    items: float | None = None
    params: dict = field(default_factory=dict)
    isa: Callable[[str], str | None] | None = None


@dataclass
class Measurement:
    family: str
    case: str
    provider: str
    threads: int
    seconds: float  # median time of one call
    speedup: float | None  # baseline seconds / seconds, same run
    items_per_s: float | None
    isa: str = ""
    params: dict = field(default_factory=dict)


def torch_isa() -> str:
    """The row label of code torch runs (its own dispatch: e.g. "torch:avx512"; bfloat16 GEMMs may use AMX)."""
    return "torch:" + torch.backends.cpu.get_cpu_capability().lower().replace("default", "generic")


def build_isa() -> str:
    """The level arkern's compiled kernels without run-time dispatch are built for ("avx512" or "avx2")."""
    from arkern.backends import cpu_isas

    return "avx512" if cpu_isas().get("avx512") is None else "avx2"


def default_isa(provider: str) -> str:
    """Row label when a case does not say: torch's level for the PyTorch baselines, else the build's."""
    return torch_isa() if provider in ("reference", "eager", "naive", "roofline") else build_isa()


def measure(fn: Callable[[], object], threads: int, min_run_time: float = 0.3) -> float:
    """Median seconds per call of `fn` with `threads` intra-op threads."""
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def run_case(case: Case, threads: int, min_run_time: float = 0.3,
             providers: Iterable[str] | None = None) -> list[Measurement]:
    """Time every provider of `case` at `threads` threads; ratios against the baseline."""
    fns = case.setup()
    names = [p for p in fns if providers is None or p in providers or p == case.baseline]
    times, isas = {}, {}
    for p in names:
        times[p] = measure(fns[p], threads, min_run_time)
        isas[p] = (case.isa(p) if case.isa else None) or default_isa(p)
    base = times.get(case.baseline)
    return [Measurement(case.family, case.name, p, threads, t, (base / t) if base else None,
                        (case.items / t) if case.items else None, isas[p], dict(case.params))
            for p, t in times.items()]


def machine_info() -> dict:
    """What every figure is reported with: CPU, cores, torch version and capability."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": _cores(), "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def format_table(rows: list[Measurement]) -> str:
    """A plain-text table: one line per (case, provider, threads)."""
    head = (f"{'family':<16} {'case':<44} {'provider':<12} {'isa':<13} {'thr':>3} {'time':>11} {'vs base':>8} "
            f"{'items/s':>10}")
    lines = [head, "-" * len(head)]
    for m in rows:
        t = f"{m.seconds * 1e3:9.3f}ms" if m.seconds >= 1e-3 else f"{m.seconds * 1e6:9.1f}us"
        ratio = f"{m.speedup:7.2f}x" if m.speedup is not None else ""
        ips = f"{m.items_per_s:10.0f}" if m.items_per_s is not None else ""
        lines.append(f"{m.family:<16} {m.case[:44]:<44} {m.provider:<12} {m.isa:<13} {m.threads:>3} {t:>11} "
                     f"{ratio:>8} {ips:>10}")
    return "\n".join(lines)


def run_report(families: Iterable[str], *, quick: bool = False, threads: Iterable[int] = (1, 2),
               json_path: str | None = None, plot_path: str | None = None,
               printer: Callable[[str], None] = print) -> list[Measurement]:
    """Run every case of `families`, print the ratio table, optionally write JSON and a PNG plot."""
    rows: list[Measurement] = []
    info = machine_info()
    printer(f"machine: {info['cpu']} ({info['cores']} cores, {info['capability']}), torch {info['torch']}")
    min_time = 0.1 if quick else 0.4
    for family in families:
        module = importlib.import_module(f"arkern.bench.{family}")
        for case in module.cases(quick=quick):
            for n in threads:
                got = run_case(case, n, min_time)
                table = format_table(got)
                printer(table if not rows else table.split("\n", 2)[2])
                rows.extend(got)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"machine": info, "results": [asdict(r) for r in rows]}, f, indent=1)
    if plot_path:
        _plot(rows, plot_path)
    return rows


def _line_config(case: str, batch: int) -> str:
    """A case's name without its batch-size token ("B=64", "N=64"): the configuration a plot line follows."""
    return " ".join(w for w in case.split() if w not in (f"B={batch}", f"N={batch}"))


def _plot(rows: list[Measurement], path: str) -> dict[tuple[str, str, str], dict[tuple, list[tuple[int, float, str]]]]:
    """Items/s against batch size: one panel per (family, model, unit) that has batched cases, one line per
    (configuration, provider, threads) -- solid 1 thread, dashed more -- labelled with the instruction-set
    level it ran at; a point that ran at another level than the rest of its line (e.g. a bfloat16 row group
    too small for AMX tiles) is drawn hollow and named. Families without a batch parameter get speedup bars.
    Returns the panels: {(family, model, unit): {(configuration, provider, threads): [(batch, items/s, level)]}}."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("the plot needs matplotlib: pip install 'arkern[plot]'") from exc
    batched = [r for r in rows if "batch" in r.params and r.items_per_s]
    bars = [r for r in rows if "batch" not in r.params and r.speedup is not None and r.provider != "reference"]
    panels: dict[tuple[str, str, str], dict[tuple, list[tuple[int, float, str]]]] = {}
    for r in batched:
        panel = (r.family, str(r.params.get("model", "")), str(r.params.get("unit", "samples")))
        line = (_line_config(r.case, r.params["batch"]), r.provider, r.threads)
        panels.setdefault(panel, {}).setdefault(line, []).append((r.params["batch"], r.items_per_s, r.isa))
    if not panels and not bars:
        raise RuntimeError("nothing to plot: no measurement has a batch size or a speedup")
    n = len(panels) + (1 if bars else 0)
    fig, axes = plt.subplots(n, 1, figsize=(10, 4.5 * len(panels) + (0.3 * len(bars) + 1.5 if bars else 0)),
                             squeeze=False)
    for ax, ((family, model, unit), lines) in zip(axes[:, 0], sorted(panels.items())):
        for (config, provider, threads), pts in sorted(lines.items()):
            pts.sort()
            levels = [isa for _, _, isa in pts]
            main = max(set(levels), key=levels.count)
            (handle,) = ax.plot([b for b, _, _ in pts], [v for _, v, _ in pts], marker="o",
                                ls="-" if threads == 1 else "--", label=f"{config} {provider} [{main}, {threads}t]")
            for b, v, isa in pts:
                if isa != main:
                    ax.plot([b], [v], marker="o", ms=9, mfc="white", mec=handle.get_color(), ls="none")
                    ax.annotate(isa, (b, v), textcoords="offset points", xytext=(6, -10), fontsize=7,
                                color=handle.get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(f"{unit}/s")
        ax.set_title(f"{family}{': ' + model if model else ''} -- {unit}/s by batch, instruction-set level and "
                     "threads (one run)")
        ax.legend(fontsize=6, ncol=2)
        ax.grid(True, which="both", lw=0.3)
    if bars:
        ax = axes[-1, 0]
        labels = [f"{r.family}: {r.case[:30]} [{r.provider}, {r.isa}, {r.threads}t]" for r in bars]
        ax.barh(range(len(bars)), [r.speedup for r in bars])
        ax.set_yticks(range(len(bars)), labels, fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("speedup over baseline (same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return panels
