# `make up` and `make test` are the two commands a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install up test test-fast lint bench chaos clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel

# torch goes in first, pinned, so nothing later resolves a CUDA build. The dashboard's
# browser tests drive Debian's chromium (Playwright never downloads one): installed here
# when missing and we are root (CI); elsewhere `apt-get install chromium` by hand.
$(STAMP): pyproject.toml | $(PY)
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	@# tests/integration/test_prometheus.py runs Debian's prometheus and promtool (it starts
	@# its own on a free port; a packaged service, if one starts, is left alone).
	@command -v prometheus >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus \
		>/dev/null; }
	$(PIP) install -q --disable-pip-version-check "$(TORCH)"
	$(PIP) install -q --disable-pip-version-check -e ".[dev]" "$(TORCH)"
	@touch $(STAMP)

install: $(STAMP)

up: install
	$(VENV)/bin/stratum up

test: install
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -m "not integration and not slow"

lint: install
	$(VENV)/bin/ruff check stratum tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Fault scenarios against a running deployment (default: the mnist that `make up` serves),
# e.g. make chaos CHAOS_NAME=digits CHAOS_ARGS="--scenarios replica-kill,gateway-kill".
CHAOS_NAME ?= mnist
CHAOS_ARGS ?=
chaos: install
	$(VENV)/bin/stratum chaos $(CHAOS_NAME) $(CHAOS_ARGS)

bench: install
	$(PY) bench/data.py
	$(PY) bench/train.py
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) .stratum .pytest_cache .mypy_cache .ruff_cache
