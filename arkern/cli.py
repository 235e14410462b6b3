"""The `arkern` command.

    arkern bench [--quick] [--json PATH] [--plot PATH] [--threads 1 2] [--families NAME ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arkern", description="Fast masked/causal convolutions and sampling.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time every op's kernels against their baselines; print the ratio table")
    b.add_argument("--quick", action="store_true", help="fewer, smaller configurations and shorter timing")
    b.add_argument("--json", metavar="PATH", help="write the measurements as JSON")
    b.add_argument("--plot", metavar="PATH", help="draw a PNG of the speedups (needs matplotlib)")
    b.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts (default 1 2)")
    b.add_argument("--families", nargs="+", metavar="NAME", help="only these op families / models")
    return p


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `arkern` console script; returns the exit code (2 for bad arguments)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench(args, parser)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
