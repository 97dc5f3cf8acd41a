# Two commands for a newcomer: `make run` (serve on embedded defaults) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080
# Empty: one worker per CPU (the `mskcds serve` default)
WORKERS ?=

.PHONY: run test check venv bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install when the package metadata changes.
$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

# Local use only: authentication is switched off (the service says so at start-up).
run: venv
	MSKCDS_REQUIRE_AUTH=$${MSKCDS_REQUIRE_AUTH:-false} $(BIN)/mskcds serve --host $(HOST) --port $(PORT) $(if $(WORKERS),--workers $(WORKERS))

# Everything: every test (real servers, PostgreSQL when configured) and the type check.
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m mypy

# The fast loop: unit tests only (no server processes) and the type check (config: setup.cfg [mypy]).
check: venv
	$(BIN)/python -m pytest -m "not slow" -q $(PYTEST_ARGS)
	$(BIN)/python -m mypy

bench: venv
	$(BIN)/python benchmarks/bench_service.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
