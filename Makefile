# The README's set-up is two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CURAWAY := $(VENV)/bin/curaway
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test test-fast lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip setuptools wheel
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

run: install
	$(CURAWAY) db upgrade
	$(CURAWAY) demo
	$(CURAWAY) serve --host $(HOST) --port $(PORT) --no-migrate

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) .curaway .pytest_cache .mypy_cache .ruff_cache
