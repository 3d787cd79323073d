# One-command workflows; each target creates .venv from pyproject.toml when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-sqlite test-postgres coverage lint format bench clean

$(BIN)/app: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

run: $(BIN)/app  ## serve the API on http://127.0.0.1:8000 (SQLite by default)
	$(BIN)/app serve

test:  ## the whole suite on SQLite, then on a real PostgreSQL; branch coverage of both
	rm -f .coverage .coverage.*
	$(MAKE) test-sqlite test-postgres
	$(MAKE) coverage

test-sqlite: $(BIN)/app
	$(BIN)/coverage run -m pytest

test-postgres: $(BIN)/app
	$(BIN)/python scripts/with_postgres.py $(BIN)/coverage run -m pytest

coverage: $(BIN)/app  ## combine the runs' data; fails below fail_under in pyproject.toml
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

lint: $(BIN)/app
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict app containers.py tests bench scripts

format: $(BIN)/app
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(BIN)/app  ## benchmarks against plain baselines, on SQLite and a throwaway PostgreSQL
	$(BIN)/python scripts/with_postgres.py --export BENCH_POSTGRES_URL -- $(BIN)/python -m bench

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.*
