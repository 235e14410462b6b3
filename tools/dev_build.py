"""Build a development shared object from some csrc/cpu/<family>.cpp files, without touching the
packaged extension, and print the path to pass as ARKERN_EXT_LIBS.

    ARKERN_EXT_LIBS=$(python tools/dev_build.py causal_conv1d) pytest tests/ops/test_causal_conv1d.py

Useful when several people change different kernels at once; `pip install --no-build-isolation -e .`
builds everything into arkern/_C*.so as usual.
"""

from __future__ import annotations

import os
import sys

from torch.utils.cpp_extension import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(families: list[str]) -> None:
    name = "arkern_dev_" + "_".join(families)
    build_dir = os.path.join(ROOT, "build", "dev", name)
    os.makedirs(build_dir, exist_ok=True)
    sources = [os.path.join(ROOT, "csrc", "cpu", f"{f}.cpp") for f in families]
    march = "-march=native" if os.environ.get("ARKERN_NATIVE", "1") == "1" else "-march=x86-64-v3"
    load(name=name, sources=sources, build_directory=build_dir, is_python_module=False, verbose=False,
         extra_cflags=["-O3", "-std=c++17", "-fopenmp", march], extra_ldflags=["-fopenmp"])
    print(os.path.join(build_dir, f"{name}.so"))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python tools/dev_build.py FAMILY [FAMILY ...]")
    main(sys.argv[1:])
