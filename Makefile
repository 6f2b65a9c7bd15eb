# Two commands on a fresh machine: `make repro` (the pipeline on real MNIST) and `make test`.
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Offline here: use the local MNIST copy beside the checkout when there is one; users with
# internet get the public mirrors (checksums are verified either way).
SHARED_MNIST := $(abspath ../shared/mnist)
export MNIST_MIRROR ?= $(if $(wildcard $(SHARED_MNIST)/*.gz),$(SHARED_MNIST),)
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test lint clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: it resolves to the CPU build; every later resolve then keeps it.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

repro: setup
	dvc repro

test: setup lint
	python -m pytest -q

lint: setup
	ruff check edgequant stages tests
	ruff format --check edgequant stages tests

clean-venv:
	rm -rf $(VENV)
