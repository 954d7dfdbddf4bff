# One Makefile: the README's commands and CI (.ci/run) call these targets.
# `make serve` starts the service on built-in defaults; `make test` runs the tests. Both install what they need.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q -c constraints.txt

.PHONY: help install install-serve system-deps serve demo first-run-test test test-fast image-test lint format bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-all: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[train,lm,serve,dev]"
	touch $@

install: $(VENV)/.installed-all  ## the whole project with every extra (train, lm, serve, dev)

# The serving extra only (no torch): what `make serve` needs. A venv with every extra has it too.
$(VENV)/.installed-serve: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[serve]"
	touch $@

install-serve: $(VENV)/.installed-serve  ## only the serving extra (FastAPI, ONNX Runtime; no torch)

system-deps:  ## redis-server and docker-compose via apt, only where missing
	bash scripts/install-system-deps.sh

serve: install-serve  ## start the service on built-in defaults, serving the demo bundles shipped in the package
	$(BIN)/sparsecodes serve --demo

DEMO_BUILD ?= build/demo-bundles
demo: install  ## rebuild the demo bundles (seeded) into build/demo-bundles; check they verify and match the shipped ones
	$(BIN)/sparsecodes demo --models $(DEMO_BUILD) --force --no-progress --check-against sparsecodes/serve/demo_bundles

test: install system-deps  ## lint, then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

image-test: install system-deps  ## build the serving image and the compose stack for real and test them (needs root; ~10 min cold, ~2 min warm)
	bash scripts/image-test.sh

first-run-test: install  ## clone this checkout, run `make serve` in a fresh venv, time /v2/health/ready (a few minutes)
	SPARSECODES_FIRST_RUN_TEST=1 $(BIN)/python -m pytest -q -s tests/deploy/test_first_run.py

test-fast: install  ## tests without the slower training studies
	$(BIN)/python -m pytest -q -m "not slow"

lint: install  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install  ## every benchmark (several minutes); tables printed, JSON under bench-results/
	for b in train export serve load; do $(BIN)/sparsecodes bench $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench-results
