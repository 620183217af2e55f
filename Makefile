# xrouter — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements/lock.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP) ## create .venv from the lock (the environment everything runs in)

run: $(STAMP) ## start the local stack, route held-out prompts through every policy, print the table
	$(VENV)/bin/xrouter demo

up: $(STAMP) ## start the four services locally until Ctrl-C
	$(VENV)/bin/xrouter up

test: $(STAMP) protos-check ## the whole test suite (Postgres tests skip loudly without a server; fail in CI)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -ra

bench: $(STAMP) ## benchmarks; figures land in bench-results/*.json
	$(PY) -m bench.run

protos: $(STAMP) ## regenerate _pb2, _grpc and .pyi from protos/ into services/xrouter/api
	$(PY) scripts/gen_protos.py services/xrouter/api

protos-check: $(STAMP) ## fail if the generated code differs from what protos/ produce
	@tmp=$$(mktemp -d) && $(PY) scripts/gen_protos.py $$tmp/api && \
	  diff -r -x __pycache__ $$tmp/api services/xrouter/api >/dev/null || \
	  { echo "generated code is stale: run 'make protos' and commit"; diff -r -x __pycache__ $$tmp/api services/xrouter/api | head -20; exit 1; }; \
	  rm -rf $$tmp; echo "protos: generated code up to date"

lock: ## re-resolve the dependencies into requirements/lock.txt (needs the network to PyPI)
	rm -rf /tmp/xrouter-lock && $(PYTHON) -m venv /tmp/xrouter-lock
	/tmp/xrouter-lock/bin/pip install --quiet -e ".[dev]"
	{ echo "# Exact versions the tests, \`make run\` and the images install (regenerate with \`make lock\`)."; \
	  /tmp/xrouter-lock/bin/pip freeze --exclude-editable; } > requirements/lock.txt

clean: ## remove the environment and local state
	rm -rf $(VENV) var bench-results .pytest_cache

.PHONY: help venv run up test bench protos protos-check lock clean
