# Two commands on a fresh machine: `make repro` (every pipeline: the MNIST reference and workloads/) and `make test`.
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Offline here: use the local MNIST copy beside the checkout when there is one; users with
# internet get the public mirrors (checksums are verified either way).
SHARED_MNIST := $(abspath ../shared/mnist)
export MNIST_MIRROR ?= $(if $(wildcard $(SHARED_MNIST)/*.gz),$(SHARED_MNIST),)
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup runtimes repro deps test test-fast lint compare vega machine worker fashion-mnist clean-venv arm-numerics

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: it resolves to the CPU build; every later resolve then keeps it.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The edge runtimes (OpenVINO + NNCF, LiteRT + litert-torch, Vela), which params.yaml's methods and the
# npu stage use: a second step without the resolver, every package pinned; requirements-runtimes.txt says
# why (litert-torch's converter asks for an old typing-extensions that dvc cannot run with).
runtimes: $(VENV)/.runtimes

$(VENV)/.runtimes: $(VENV)/.installed requirements-runtimes.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-runtimes.txt
	touch $@

# Every pipeline: the MNIST reference (./dvc.yaml) and each workload under workloads/ (their own dvc.yaml).
# The params files are checked first: DVC reads them itself before any stage runs, and reports a scalar
# method list as an error in dvc.yaml (or, for a file of nested YAML aliases, runs out of memory).
repro: setup runtimes fashion-mnist
	python -m edgequant.team.dvclock --repair
	python -m edgequant.validate params.yaml $(wildcard workloads/*/params.yaml)
	dvc repro -P

# Each stage's code deps (its import closure) into dvc.yaml and probe/dvc.yaml, and every workload's dvc.yaml derived again.
deps: setup
	python -m edgequant.deps

# The whole suite on TEST_WORKERS processes (pytest-xdist), a test file at a time each, in the order
# tests/conftest.py gives (longest first); each worker runs one thread where a test or stage sets none.
TEST_WORKERS ?= 2
test: setup runtimes lint
	python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

# The unit tier: every test not marked slow (no pipeline, server, export or subprocess), in about a minute.
# Plugin autoload off: hypothesis and hydra, installed as dependencies of dependencies, register pytest
# plugins that take seconds to import and that no test here uses.
test-fast: setup
	PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -q -m "not slow"

lint: setup
	ruff check edgequant stages tests notebooks
	ruff format --check edgequant stages tests notebooks

# This machine's run into the fleet: machines/<name>/ (commit it) and a DVC experiment of the same name
# (`dvc exp push origin <name>` shares it; a teammate's `dvc exp pull origin <name>` brings it back).
machine: setup runtimes
	python -m edgequant.team.dvclock --repair
	dvc repro  # the reference pipeline: the fleet compares machines on it
	@name=$$(python -m edgequant.fleet.table save --out machines) && dvc repro fleet && \
	dvc exp save --force --include-untracked machines/$$name -n $$name >/dev/null && \
	echo "saved machines/$$name and experiment $$name; share: git add machines/$$name, or dvc exp push origin $$name"

# This machine as a fleet worker: a Celery worker on the queue its probe names, one job at a time; the broker's
# address and password from fleet.local.yaml (git-ignored) or EDGEQUANT_BROKER_URL/_PASSWORD (docs/fleet-queue.md).
worker: setup runtimes
	python -m edgequant.fleet worker

# The bench bundle on Arm kernels, emulated: each ONNX and ExecuTorch artifact's accuracy and agreement with FP32,
# computed by the arm64 builds of their runtimes under qemu (`-cpu $(ARM_CPU)`), into machines/qemu-arm64-<cpu>-<feature>/
# as a fleet row marked "emulated: numerics only, no timing". Needs root; Debian's debootstrap and cross compiler are
# installed where apt-get is available. The arm64 root is built once into .cache/arm64 (about 420 MB).
ARM_CPU ?= max
arm-numerics: setup
	@command -v debootstrap >/dev/null && command -v aarch64-linux-gnu-g++ >/dev/null || { \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); $$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends debootstrap g++-aarch64-linux-gnu; }
	dvc repro bundle
	python -m edgequant.device.emulate bundle --cpu $(ARM_CPU) --out machines

# The Markdown report a reviewer reads: `make compare A=main B=my-branch` (also experiments, commits).
A ?= main
B ?= workspace
compare: setup
	python -m edgequant.report.compare '$(subst ','\'',$(A))' '$(subst ','\'',$(B))' \
		--out 'reports/$(subst ','\'',$(subst /,_,$(A))_vs_$(subst /,_,$(B)))' \
		$(if $(wildcard $(VEGA_DIR)/vega-embed.min.js),--vega-dir $(VEGA_DIR),)

# The versions `dvc plots` HTML loads from a CDN, fetched once from the npm registry (checksums pinned),
# for offline, self-contained plot pages and the headless-browser test.
VEGA_DIR := .cache/vega
VEGA_PKGS := vega@5.20.2:d77deab01d6104b1239228720721f93003e60797d2faced7ffdd759fa70f989d \
	vega-lite@5.2.0:f64ca4745f043447ac86b67dc9e9592ec2b85ac8b8dafc35faf970f142463e4b \
	vega-embed@6.18.2:93aeee312e92077b0252ef026c0fe0ec8fa430c19825aeada6cd3a6804e68e1b
vega: $(VEGA_DIR)/vega-embed.min.js

$(VEGA_DIR)/vega-embed.min.js:
	mkdir -p $(VEGA_DIR)
	set -e; for spec in $(VEGA_PKGS); do \
		pkg=$${spec%%:*}; sha=$${spec##*:}; name=$${pkg%@*}; version=$${pkg#*@}; \
		tgz=$(VEGA_DIR)/$$name-$$version.tgz; \
		curl -fsSL --retry 3 -o $$tgz https://registry.npmjs.org/$$name/-/$$name-$$version.tgz; \
		echo "$$sha  $$tgz" | sha256sum -c --quiet; \
		tar -xzOf $$tgz package/build/$$name.min.js > $(VEGA_DIR)/$$name.min.js.tmp; \
		mv $(VEGA_DIR)/$$name.min.js.tmp $(VEGA_DIR)/$$name.min.js; rm $$tgz; \
	done

# Fashion-MNIST offline (download.dataset: fashion_mnist): Debian's dataset-fashion-mnist, where apt is available.
# Its files are recompressed; the download stage verifies their decompressed content against upstream's.
fashion-mnist:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST is in /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null; then sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		($$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends dataset-fashion-mnist) \
		|| echo "could not install dataset-fashion-mnist: the download stage takes Fashion-MNIST from the public mirror"; \
	else echo "no apt-get here: the download stage takes Fashion-MNIST from the public mirror"; fi

clean-venv:
	rm -rf $(VENV)

# The generated blocks of README.md and docs/*.md, from metrics/, plots/, params.yaml and `dvc dag`.
.PHONY: docs
docs: setup
	python -m edgequant.report.readme README.md docs/*.md
