# The two commands of the README: `make demo` and `make test` (each sets up its own .venv).
# torch==2.13.0 is installed first: on CPU machines pip takes the CPU build from the local disk
# instead of pulling several GB of CUDA wheels for the package's own `torch>=2.1` requirement.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?=
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test test-engine test-slicer bench clean screenshot gpu-bench

$(VENV)/.engine-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,server]"
	touch $@

# The headless Slicer (MRML) wheel for the Slicer-logic tests; it pins vtk 9.6.2.
$(VENV)/.slicer-installed: $(VENV)/.engine-installed
	$(BIN)/python -m pip install --quiet "slicer-core==5.13.31053.0" "slicerio>=1.0"
	touch $@

setup: $(VENV)/.engine-installed

demo: $(VENV)/.engine-installed
	$(BIN)/semisupseg demo $(if $(DATA),--data $(DATA),)

test: $(VENV)/.slicer-installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-engine: $(VENV)/.engine-installed
	$(BIN)/python -m pytest -q Testing/engine $(PYTEST_ARGS)

test-slicer: $(VENV)/.slicer-installed
	$(BIN)/python -m pytest -q Testing/slicer_logic Testing/cmake $(PYTEST_ARGS)

bench: $(VENV)/.engine-installed
	$(BIN)/python Testing/benchmarks/run_benchmarks.py

# Every GPU figure in one run of at most 540 s on a lent GPU machine (docs/gpu.md). No venv there:
# the image's python3 runs it, with the wheels carried in .gpu_wheels. Here:
# make gpu-bench GPU_PYTHON=.venv/bin/python GPU_BENCH_ARGS=--dry-run
GPU_PYTHON ?= python3
GPU_BENCH_ARGS ?=
gpu-bench:
	$(GPU_PYTHON) Testing/benchmarks/gpu_bench.py $(if $(wildcard .gpu_wheels/*.whl),--wheels .gpu_wheels,) $(GPU_BENCH_ARGS)

# The demo's results in Slicer's Red/Yellow/Green slice views, rendered headless (EGL) by
# Slicer's own view code from the slicer-core wheel; runs `make demo` first when its run is absent.
SCREENSHOT ?= Resources/Screenshots/SemiSupSeg-slice-views.png
screenshot: $(VENV)/.slicer-installed
	@test -f demo_output/workspace/runs/demo-dycon/regions.json || $(MAKE) demo
	$(BIN)/python Testing/slicer_logic/slice_render.py demo_output/workspace demo-dycon $(SCREENSHOT)

clean:
	rm -rf $(VENV) demo_output .pytest_cache build
