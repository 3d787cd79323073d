# One-command workflows; each target creates .venv from pyproject.toml when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pytest-xdist workers for the tests that time nothing (three on two CPUs: they wait on servers
# and subprocesses part of the time); those marked slow or serial (throughput, latency,
# timeouts) run afterwards one at a time, alone.
JOBS ?= 3
PYTEST := $(BIN)/coverage run -m pytest
TIMED := (slow or serial)
WITH_POSTGRES := $(BIN)/python scripts/with_postgres.py

.PHONY: run setup test system-packages compile test-sqlite test-postgres test-pgbouncer coverage lint format \
	bench clean image image-test

$(BIN)/app: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: system-packages $(BIN)/app  ## the virtualenv and the system packages the tests need

run: $(BIN)/app  ## serve the API on http://127.0.0.1:8000 (SQLite by default)
	$(BIN)/app serve

# The whole suite on SQLite; the tests that depend on the backend again on a real PostgreSQL,
# and those marked pgbouncer a third time through PgBouncer; combined branch coverage.
# One run at a time: each uses every CPU (JOBS), and timing tests want them.
test: system-packages $(BIN)/app
	rm -f .coverage .coverage.*
	$(MAKE) test-sqlite
	$(MAKE) test-postgres
	$(MAKE) test-pgbouncer
	$(MAKE) coverage

system-packages:  ## install PostgreSQL, PgBouncer, wrk and Chromium with apt-get when missing
	scripts/system_packages.sh

# Bytecode for the fresh interpreters the tests start (servers, CLI runs), even where
# PYTHONDONTWRITEBYTECODE is set.
compile: $(BIN)/app
	$(BIN)/python -m compileall -q app containers.py tests bench scripts

test-sqlite: compile
	$(PYTEST) -n $(JOBS) --dist loadgroup -m "not $(TIMED)"
	$(PYTEST) -n 0 -m "$(TIMED)"

# One throwaway server for both phases of a run.
test-postgres: compile
	$(WITH_POSTGRES) sh -c '$(PYTEST) --backend-tests-only -n $(JOBS) --dist loadgroup \
		-m "not $(TIMED)" && $(PYTEST) --backend-tests-only -n 0 -m "$(TIMED)"'

# Transaction pooling (the plugin sets DB_PREPARE_THRESHOLD=none). Not measured by coverage:
# the same code as the PostgreSQL run, and tracing it costs a third of this run's CPU.
test-pgbouncer: compile
	$(WITH_POSTGRES) --pgbouncer sh -c '$(BIN)/pytest --backend-tests-only -n $(JOBS) \
		--dist loadgroup -m "pgbouncer and not $(TIMED)" \
		&& $(BIN)/pytest --backend-tests-only -n 0 -m "pgbouncer and $(TIMED)"'

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
	scripts/system_packages.sh image
	$(BIN)/python scripts/image_test.py --engine $(ENGINE) base $(TEST_BASE_IMAGE)
	$(MAKE) image ENGINE=$(ENGINE) BASE_IMAGE=$(TEST_BASE_IMAGE) IMAGE=$(TEST_IMAGE)
	$(BIN)/python scripts/image_test.py --engine $(ENGINE) run $(TEST_IMAGE)

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.*
