# govml: every target depends on `setup`, which builds both environments from
# the committed lock files (idempotent: it only reinstalls when a lock changes).
SHELL := /bin/bash
PYTHON ?= python3.11
ROOT := $(abspath .)
TOOLS := $(ROOT)/.venv-tools
UV := $(TOOLS)/bin/uv
VENV := $(ROOT)/.venv
SVENV := $(ROOT)/.venv-serving
MVENV := $(ROOT)/.venv-mlserver
EVENV := $(ROOT)/.venv-evidently
PY := $(VENV)/bin/python
GOVML := $(VENV)/bin/govml
UV_VERSION := 0.13.8
export UV_LINK_MODE := copy
# Compile bytecode at install time: with PYTHONDONTWRITEBYTECODE set (as on CI
# machines) Python would otherwise recompile every imported module in every process
# (about 4.5 s per Airflow task process and per `dag.test()` run).
export UV_COMPILE_BYTECODE := 1
PACKAGES := pipelines validation registry serving ops dags


.PHONY: wrk browser setup demo test test-unit test-integration lint bench up down status lock clean data

setup: $(VENV)/.installed $(SVENV)/.installed

$(UV):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q uv==$(UV_VERSION)

$(VENV)/.installed: requirements/orchestration.lock setup.cfg pyproject.toml Makefile | $(UV)
	[ -x $(PY) ] || $(UV) venv -q --python $(PYTHON) $(VENV)
	$(UV) pip sync -q --python $(PY) requirements/orchestration.lock
	$(UV) pip install -q --python $(PY) --no-deps --config-setting editable_mode=compat -e .
	$(PY) -m compileall -q -j 0 $(PACKAGES)
	touch $@

$(SVENV)/.installed: requirements/serving.lock setup.cfg pyproject.toml Makefile | $(UV)
	[ -x $(SVENV)/bin/python ] || $(UV) venv -q --python $(PYTHON) $(SVENV)
	$(UV) pip sync -q --python $(SVENV)/bin/python requirements/serving.lock
	$(UV) pip install -q --python $(SVENV)/bin/python --no-deps --config-setting editable_mode=compat -e .
	touch $@

# The peer for benchmarks/bench_serving.py (MLServer's LightGBM runtime); only `make bench`.
$(MVENV)/.installed: requirements/mlserver.lock Makefile | $(UV)
	[ -x $(MVENV)/bin/python ] || $(UV) venv -q --python $(PYTHON) $(MVENV)
	$(UV) pip sync -q --python $(MVENV)/bin/python requirements/mlserver.lock
	touch $@

# The peer for benchmarks/bench_drift.py (Evidently 0.7, which needs pandas<3); only `make bench`.
$(EVENV)/.installed: requirements/evidently.lock Makefile | $(UV)
	[ -x $(EVENV)/bin/python ] || $(UV) venv -q --python $(PYTHON) $(EVENV)
	$(UV) pip sync -q --python $(EVENV)/bin/python requirements/evidently.lock
	touch $@

# Re-resolve the lock files (needs the package index); commit the result.
lock: | $(UV)
	$(UV) pip compile -q --python-version 3.11 --python-platform x86_64-unknown-linux-gnu requirements/orchestration.in -o requirements/orchestration.lock
	$(UV) pip compile -q --python-version 3.11 --python-platform x86_64-unknown-linux-gnu requirements/serving.in -o requirements/serving.lock
	$(UV) pip compile -q --python-version 3.11 --python-platform x86_64-unknown-linux-gnu requirements/mlserver.in -o requirements/mlserver.lock
	$(UV) pip compile -q --python-version 3.11 --python-platform x86_64-unknown-linux-gnu requirements/evidently.in -o requirements/evidently.lock

data: setup
	$(GOVML) data generate --all

demo: setup
	$(GOVML) demo

# ruff, and the layer contracts of docs/architecture.md (.importlinter).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# pytest-xdist runs the suite on PYTEST_WORKERS workers, each taking whole files (a
# module's fixtures start once; the files on the shared German Credit stack are one
# unit together: tests/conftest.py), the largest first (xdist's default); the slowest
# tests are listed at the end.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL = -n $(PYTEST_WORKERS) --dist loadfile

test: setup lint browser
	$(PY) -m pytest -q $(PYTEST_PARALLEL) --durations=25 tests

# Debian's Chromium for the browser tests (tests/e2e); Playwright drives it, and
# never downloads a browser of its own. Without root the browser tests skip.
browser:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "note: chromium missing and not root: browser tests will skip (apt-get install chromium)"; \
	  fi; \
	fi

# tests/unit: no servers, no clusters, small data (about 2 minutes). The rest start real
# servers (model servers, gateway, the embedded stack), clusters, browsers, or big data.
test-unit: setup
	$(PY) -m pytest -q $(PYTEST_PARALLEL) tests/unit

test-integration: setup browser
	$(PY) -m pytest -q $(PYTEST_PARALLEL) tests/integration tests/security tests/e2e

# `make bench` runs every benchmark, writes one JSON per benchmark into benchmarks/results/
# and regenerates BENCHMARKS.md from the newest of each (benchmarks/report.py);
# `make bench ONLY=serving` reruns one. `python benchmarks/report.py` alone only regenerates.
bench: setup $(MVENV)/.installed $(EVENV)/.installed wrk
	$(PY) benchmarks/report.py run $(if $(ONLY),--only $(ONLY))

# wrk (C HTTP load generator) for the serving benchmark: Debian's package.
wrk:
	@if ! command -v wrk >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else \
	    echo "error: wrk missing: apt-get install wrk" >&2; exit 1; \
	  fi; \
	fi

up: setup
	$(GOVML) stack up

down: setup
	$(GOVML) stack down

status: setup
	$(GOVML) stack status

clean: down
	rm -rf var
