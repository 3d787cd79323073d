# One-command workflows; each target creates .venv from pyproject.toml when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-sqlite test-postgres lint format bench clean

$(BIN)/app: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

run: $(BIN)/app  ## serve the API on http://127.0.0.1:8000 (SQLite by default)
	$(BIN)/app serve

test: test-sqlite test-postgres  ## the whole suite on SQLite, then on a real PostgreSQL

test-sqlite: $(BIN)/app
	$(BIN)/pytest

test-postgres: $(BIN)/app
	$(BIN)/python scripts/with_postgres.py $(BIN)/pytest

lint: $(BIN)/app
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict app containers.py tests

format: $(BIN)/app
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(BIN)/app  ## benchmarks against plain baselines, on SQLite and a throwaway PostgreSQL
	$(BIN)/python scripts/with_postgres.py --export BENCH_POSTGRES_URL -- $(BIN)/python -m bench

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .pytest_cache .ruff_cache
