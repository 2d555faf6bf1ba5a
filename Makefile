# flopledger: `make run` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/agent.example.toml
ARGS ?=
# The trainer-side distribution flopledger-client (standard library only).
CLIENT := client

.PHONY: run test lint unit bench soak system-deps venv clean gpu-check
SOAK_CRASHES ?= 300

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CLIENT)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e ./$(CLIENT)
	touch $@

# Debian's prometheus (promtool) and prometheus-alertmanager, used by the tests, Node.js
# with npm, which check the dashboard against Grafana's published schema, and PostgreSQL,
# whose server the cluster ledger's tests start in a temporary directory.
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null \
	    || ! command -v node >/dev/null || ! command -v npm >/dev/null \
	    || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing Debian packages prometheus, prometheus-alertmanager, nodejs, npm and postgresql"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-alertmanager nodejs npm postgresql >/dev/null; \
	fi
	@# the packages start services we do not use; the tests run their own on loopback
	@if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	  systemctl stop prometheus prometheus-alertmanager prometheus-node-exporter postgresql \
	    2>/dev/null || true; fi

run: venv
	mkdir -p var
	$(BIN)/flopledger run --config $(CONFIG) $(ARGS)

lint: venv
	$(BIN)/ruff check agent exporters tests benchmarks $(CLIENT)
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest -q $(ARGS)

# The suite waits on servers and subprocesses far more than it computes: four workers
# (pytest-xdist) keep two cores busy. One file's tests stay on one worker, in order
# (--dist loadfile): module-scoped servers and fixtures are started once per file.
TEST_WORKERS ?= 4

test: venv system-deps lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

bench: venv
	$(BIN)/python -m benchmarks.run $(ARGS)

# The agent against exactly counted work on this machine's GPUs (PyTorch optional; see
# benchmarks/gpu_check.py). With PYTHON given (PYTHON=python3 make gpu-check) it runs on
# that interpreter as it is, without the venv: a GPU machine with the packages installed
# system-wide and no registry to install from.
ifeq ($(filter environment command,$(origin PYTHON)),)
GPU_CHECK_NEEDS := venv
GPU_CHECK_PYTHON := $(BIN)/python
else
GPU_CHECK_NEEDS :=
GPU_CHECK_PYTHON := $(PYTHON)
endif

gpu-check: $(GPU_CHECK_NEEDS)
	$(GPU_CHECK_PYTHON) -m benchmarks.gpu_check $(ARGS)

# The crash loop of the test suite, many more times: kill -9 at random moments.
soak: venv
	FLOPLEDGER_CRASHES=$(SOAK_CRASHES) $(BIN)/python -m pytest -q -s tests/e2e/test_crash_loop.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .cache
	find . -name __pycache__ -prune -exec rm -rf {} +
