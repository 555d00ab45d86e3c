# The two commands of the README:
#   make repro   install (once) and run the whole pipeline with `dvc repro` on the bundled sample
#                (TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu: torch's CPU wheel without a pip config)
#   make test    install (once), lint, and run the whole test suite on 2 workers (what .ci/run calls)
# For the edit loop:
#   make test-fast   the tests not marked slow or integration (under a minute on 2 cores)
#   make lint        ruff check + ruff format --check (configuration in pyproject.toml)
# The component image (docs/pipeline.md, "The image"; needs a Docker daemon):
#   make image        the CPU flavour (torch's CPU wheel): tests, laptops, CPU nodes
#   make image-cuda   the CUDA flavour (torch from PyPI, the CUDA build): GPU nodes
# Both build on BASE_IMAGE (default python:3.11-slim) and bootstrap a base from Debian packages
# (mmdebstrap) when it cannot be pulled. `make docker-start` / `docker-stop`: a private dockerd in .docker/.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BASE_IMAGE ?= python:3.11-slim
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# UTF-8 text I/O whatever the caller's locale (CI may run with a bare environment)
export PYTHONUTF8 := 1
export LANG := C.UTF-8

.PHONY: install repro lint test test-fast bench image image-cuda docker-start docker-stop clean-venv

install: $(VENV)/.installed

# torch first and alone: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
# torch 2.13.0 comes from pip's configured index: the CPU wheel where pip is configured to find it (this
# machine's pip.conf), else PyPI's Linux wheel, which is the CUDA build (a ~6 GB venv). For the CPU wheel
# from a bare environment: make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (as `make image-cuda` takes TORCH_INDEX_URL for another CUDA build).
# requirements.txt is the runtime (what the image installs), requirements-dev.txt the test/dev tools.
TORCH_INDEX_URL ?=
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

repro: install
	source $(VENV)/bin/activate && dvc repro

lint: install
	source $(VENV)/bin/activate && ruff check . && ruff format --check .

# pytest exits 5 when it selects no test: make fails on it, in both targets (also under xdist).
# TEST_WORKERS pytest-xdist processes, each running one test file at a time (--dist loadfile: a
# module's fixtures — servers, DVC projects, the image — stay in one process); 0 runs in-process.
TEST_WORKERS ?= 2
test: install lint
	source $(VENV)/bin/activate && python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test-fast: install
	source $(VENV)/bin/activate && python -m pytest -m "not slow and not integration"

bench: install
	source $(VENV)/bin/activate && python bench/bench_models.py

# scripts/image.py uses the standard library only: no virtualenv needed to build the image
image:
	python3 scripts/image.py build --flavour cpu --base $(BASE_IMAGE)

# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 for a CUDA 12.6 torch (PyPI's 2.13.0 is built for CUDA 13)
image-cuda:
	python3 scripts/image.py build --flavour cuda --base $(BASE_IMAGE) $(if $(TORCH_INDEX_URL),--torch-index-url $(TORCH_INDEX_URL))

docker-start:
	python3 scripts/image.py daemon start

docker-stop:
	python3 scripts/image.py daemon stop
