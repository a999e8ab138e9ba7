# qlayer — the two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
QLAYER := $(VENV)/bin/qlayer
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: demo test test-fast test-burst torture check lint types bench synth cloud-box screenshots install install-dev clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml infra/package-lock.json
	$(PIP) install -q -e '.[dev,aws,infra,braket,ui]'
	@# tests/e2e/test_ui.py drives Debian's chromium; without root it is skipped, and says why
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium) \
	      || echo "note: could not install chromium; tests/e2e/test_ui.py will skip"; \
	  else \
	    echo "note: chromium missing (as root: apt-get install chromium); tests/e2e/test_ui.py will skip"; \
	  fi; }
	npm ci --prefix infra --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## demo: install, start the local daemon, run the flagship example (QAOA max-cut), print the result
demo: $(VENV)/.installed
	$(QLAYER) up
	$(QLAYER) run examples/qaoa_maxcut.py --arg nodes=8 --wait

## test: install dev tools and run the whole suite, on two worker processes (a test file
##   stays on one: its module fixtures, such as a cloud box, are set up once)
test: $(VENV)/.installed-dev
	$(PY) -m pytest -q -n 2 --dist loadfile

## test-fast: the quick loop — unit tests and the port contracts on SQLite/memory (no daemon,
##   no moto), on two worker processes
test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -n 2 -m "not moto and not slow" tests/unit tests/contract

## test-burst: 500 QPU requests at once onto the stack's dispatch queue in the cloud box
##   (a limit of 8 in flight: all answered once, none dead-lettered; minutes). `make test`
##   runs the same test with 100.
test-burst: $(VENV)/.installed-dev
	QLAYER_TEST_BURST=500 $(PY) -m pytest -q -s tests/functional/test_aws_qpu.py \
		-k test_a_burst_of_requests_on_the_stacks_queue

## torture: SIGKILL the local daemon and its workers at random during a mixed workload;
##   every job must end DONE with the undisturbed results (a few minutes at most)
##   make torture TORTURE_SEED=3 TORTURE_KILLS=30
TORTURE_SEED ?= 9
TORTURE_KILLS ?= 14
torture: $(VENV)/.installed-dev
	QLAYER_TORTURE_SEED=$(TORTURE_SEED) QLAYER_TORTURE_KILLS=$(TORTURE_KILLS) \
		timeout 300 $(PY) -m pytest -q -s tests/e2e/test_local_torture.py

## check: lint, format check, types, tests
check: lint types test

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check qlayer tests bench examples infra functions
	$(VENV)/bin/ruff format --check qlayer tests bench examples infra functions

types: $(VENV)/.installed-dev
	$(VENV)/bin/mypy

## bench: the local-layer benchmarks (figures go to docs/benchmarks.md)
bench: $(VENV)/.installed-dev
	$(PY) bench/local_overhead.py
	$(PY) bench/scale.py

## screenshots: the dashboard's browser test, writing its screenshots to docs/screenshots
screenshots: $(VENV)/.installed-dev
	QLAYER_UI_SCREENSHOTS="$(CURDIR)/docs/screenshots" $(PY) -m pytest -q tests/e2e/test_ui.py

## synth: synthesise the CDK app (no Docker, no AWS account needed)
synth: $(VENV)/.installed-dev
	PYTHON="$(CURDIR)/$(PY)" bash infra/synth.sh

## cloud-box: run one program on the synthesized stack in a local cloud box (moto, no AWS)
##   make cloud-box PROGRAM=examples/ghz_sampling.py ARGS="--arg qubits=3"
PROGRAM ?= examples/ghz_sampling.py
ARGS ?=
cloud-box: $(VENV)/.installed-dev
	$(QLAYER) --target cloud-box run $(PROGRAM) $(ARGS) --wait

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
