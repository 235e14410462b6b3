# arkern: `make demo` runs the main job on a built-in default, `make test` runs the tests.
# Both create (or reuse) a virtual environment in .venv with the pinned CPU torch and build the extension.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.arkern-installed
SOURCES := pyproject.toml setup.py $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' 2>/dev/null)
export MAX_JOBS ?= 2

.PHONY: install demo test bench lint sanitize clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# the CPU torch wheel, pinned: a looser requirement would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q setuptools wheel ninja
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# the MNIST demo: 100 class-conditional samples of the bundled mnist model (one row per digit) to out/mnist.png,
# then every sampler timed on the same 10 digits (--compare: speedups vs naive, and a check that all methods
# draw identical samples). One thread: the decode steps are small ops, and two threads on a busy 2-core
# machine oversubscribe it badly.
demo: $(STAMP)
	$(PY) -m arkern sample mnist --n 100 --class-rows --seed 0 --out out/mnist.png --compare --compare-n 10 \
		--threads 1 --no-progress

# TRITON_INTERPRET=1: the Triton kernels execute on CPU tensors in the interpreter (no GPU here)
test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q --durations=15 tests

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks --benchmark-only --benchmark-group-by=group --benchmark-columns=min,median,rounds

# The C++ kernels under AddressSanitizer + UndefinedBehaviorSanitizer: a separate build (build/sanitize; the
# in-place arkern/_C*.so is untouched) loaded through ARKERN_EXT_LIBS, libasan preloaded into the unsanitized
# python (it must come first; libstdc++ too, or ASan cannot find the real __cxa_throw and aborts at the first
# C++ exception), every finding fatal. Leak detection is off: CPython and torch keep allocations until exit.
# SANITIZE_TESTS / SANITIZE_K choose the tests (default: every op and fused-sampler test and the bad-input
# corpus, not the Triton interpreter's nor nvcc's, which would inherit the preload).
SANITIZE_DIR ?= build/sanitize
SANITIZE_TESTS ?= tests
SANITIZE_K ?= (causal_conv1d or masked_conv2d or masked_linear or shifted_conv2d or fused or pixelcnn_decode \
	or pixelcnnpp_decode or wavenet or bad_input) \
	and not triton and not nvcc
sanitize: $(STAMP)
	ARKERN_SANITIZE=1 $(PY) setup.py -q build_ext -b $(SANITIZE_DIR)/lib -t $(SANITIZE_DIR)/temp
	ARKERN_EXT_LIBS="$$(ls $(SANITIZE_DIR)/lib/arkern/_C*.so)" \
	LD_PRELOAD="$$(c++ -print-file-name=libasan.so) $$(c++ -print-file-name=libstdc++.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0:allocator_may_return_null=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(PY) -m pytest -q -p no:cacheprovider $(SANITIZE_TESTS) -k "$(SANITIZE_K)"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf build out *.egg-info arkern/_C*.so
