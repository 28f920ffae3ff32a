# `make demo` and `make test` do all set-up on a fresh machine: a virtualenv in .venv, the CPU build of torch
# first (so nothing pulls CUDA wheels), then the project and its test dependencies, and redis-server for the
# ledger tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup test test-fast demo bench redis clean

setup: $(STAMP) redis

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The ledger's Redis backend is tested against a real server on loopback.
redis:
	@command -v redis-server >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q redis-server >/dev/null; }; }

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the end-to-end tests marked slow.
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/vpt-ray demo $(DEMO_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
