"""Build the optional C++ extension `arkern._C`.

The CPU kernels in csrc/cpu/ are always compiled (unless ARKERN_USE_CPP=0). CUDA sources are compiled
only when the installed torch has CUDA; the CPU wheel lacks some CUDA headers, so the .cu files never
include torch headers and are bound from csrc/cuda_bindings.cpp.
"""

import glob
import os

from setuptools import setup

ext_modules = []
cmdclass = {}

if os.environ.get("ARKERN_USE_CPP", "1") != "0":
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    # -march=native by default (the kernels are built on the machine that runs them);
    # ARKERN_NATIVE=0 builds a portable AVX2 binary instead.
    march = "-march=native" if os.environ.get("ARKERN_NATIVE", "1") == "1" else "-march=x86-64-v3"
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", march]
    link_flags = ["-fopenmp"]
    # ARKERN_SANITIZE=1 (`make sanitize`): AddressSanitizer + UndefinedBehaviorSanitizer, every finding fatal.
    # Build it into its own directory (build_ext -b DIR) and load it with ARKERN_EXT_LIBS; vptr checks are
    # off because torch's classes are not built with them.
    if os.environ.get("ARKERN_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-sanitize=vptr", "-fno-sanitize-recover=all"]
        cxx_flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-std=c++17", "-fopenmp", march] + san
        link_flags += san
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    if torch.cuda.is_available() or os.environ.get("ARKERN_FORCE_CUDA") == "1":
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + ["csrc/cuda_bindings.cpp"]
        ext = CUDAExtension("arkern._C", sources,
                            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]})
    else:
        ext = CppExtension("arkern._C", sources, extra_compile_args=cxx_flags, extra_link_args=link_flags)
    ext_modules = [ext]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
