# One Makefile: the README's commands and CI (.ci/run) call these targets.
# `make serve` starts the service on built-in defaults; `make test` runs the tests. Both install what they need.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q -c constraints.txt

.PHONY: help install install-serve system-deps serve test test-fast image-test lint format bench grpc-protos clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-all: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[train,lm,serve,dev]"
	touch $@

install: $(VENV)/.installed-all  ## the whole project with every extra (train, lm, serve, dev)

system-deps:  ## redis-server and docker-compose via apt, only where missing
	bash scripts/install-system-deps.sh

serve: install  ## start the service on built-in defaults (builds demo bundles on first run)
	$(BIN)/sparsecodes serve --demo

test: install system-deps  ## lint, then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

image-test: install system-deps  ## build the serving image and the compose stack for real and test them (needs root; ~10 min cold, ~2 min warm)
	bash scripts/image-test.sh

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

grpc-protos: install  ## regenerate sparsecodes/serve/rpc/oip_pb2.py(i) from oip.proto (commit the result)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. sparsecodes/serve/rpc/oip.proto

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench-results
