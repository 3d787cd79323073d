# One-command workflows; each target creates .venv from pyproject.toml when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-sqlite test-postgres test-pgbouncer coverage lint format bench clean image image-test

$(BIN)/app: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

run: $(BIN)/app  ## serve the API on http://127.0.0.1:8000 (SQLite by default)
	$(BIN)/app serve

test:  ## the suite on SQLite, on a real PostgreSQL, in part through PgBouncer; branch coverage
	rm -f .coverage .coverage.*
	$(MAKE) test-sqlite test-postgres test-pgbouncer
	$(MAKE) coverage

test-sqlite: $(BIN)/app
	$(BIN)/coverage run -m pytest

test-postgres: $(BIN)/app
	$(BIN)/python scripts/with_postgres.py $(BIN)/coverage run -m pytest

# The HTTP contract, concurrency and stress, migrations and outages, through PgBouncer in
# transaction mode (the plugin sets DB_PREPARE_THRESHOLD=none).
PGBOUNCER_TESTS := tests/test_users.py tests/test_items.py tests/test_health.py \
	tests/test_errors.py tests/test_transactions.py tests/test_stress.py tests/test_overload.py \
	tests/test_migrations.py tests/test_outage.py tests/test_pgbouncer.py

test-pgbouncer: $(BIN)/app
	$(BIN)/python scripts/with_postgres.py --pgbouncer $(BIN)/coverage run -m pytest $(PGBOUNCER_TESTS)

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

# The container image (docs/deploy.md): docker where its daemon answers, else podman without a
# daemon (chroot isolation). A CA bundle in SSL_CERT_FILE reaches pip as a build secret only.
IMAGE ?= fastapi-di-sqlalchemy
BASE_IMAGE ?=
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
TEST_BASE_IMAGE ?= localhost/fastapi-di-sqlalchemy-base:bookworm
TEST_IMAGE ?= localhost/fastapi-di-sqlalchemy:image-test
comma := ,

image:  ## build IMAGE from BASE_IMAGE (default: the official python slim image)
	$(ENGINE) build $(if $(filter podman,$(ENGINE)),--isolation chroot --format docker) \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
		$(if $(SSL_CERT_FILE),--secret id=pip_cert$(comma)src=$(SSL_CERT_FILE)) \
		--tag $(IMAGE) .

image-test: $(BIN)/app  ## build the image on a local Debian base, run it chrooted and check it
	$(BIN)/python scripts/image_test.py --engine $(ENGINE) base $(TEST_BASE_IMAGE)
	$(MAKE) image ENGINE=$(ENGINE) BASE_IMAGE=$(TEST_BASE_IMAGE) IMAGE=$(TEST_IMAGE)
	$(BIN)/python scripts/image_test.py --engine $(ENGINE) run $(TEST_IMAGE)

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.*
