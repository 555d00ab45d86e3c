# The two commands of the README:
#   make repro   install (once) and run the whole pipeline with `dvc repro` on the bundled sample
#   make test    install (once) and run the test suite (what .ci/run calls)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# UTF-8 text I/O whatever the caller's locale (CI may run with a bare environment)
export PYTHONUTF8 := 1
export LANG := C.UTF-8

.PHONY: install repro test bench clean-venv

install: $(VENV)/.installed

# torch first and alone: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

repro: install
	source $(VENV)/bin/activate && dvc repro

test: install
	source $(VENV)/bin/activate && python -m pytest

bench: install
	source $(VENV)/bin/activate && python bench/bench_models.py
