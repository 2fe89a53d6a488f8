# The two commands: `make run` (try AdSync on this machine) and `make test` (the whole suite).
# CI (.ci/run) calls `make lint` (ruff, import-linter, mypy) and `make test`.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)

# Tests run on PostgreSQL and Redis; override these to point elsewhere.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/adsync
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
TEST_ENV := DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) SECRET_KEY=test-only-secret

.PHONY: install run test test-fast test-postgres test-embedded lint format bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Web + worker + dispatcher + beat in one foreground command, under adsync/supervisor.py: each
# process logs to $ADSYNC_DATA_DIR/logs/<name>.log (.data/logs/), the terminal shows warnings,
# errors and deaths (VERBOSE=1: everything), a process that dies is restarted, and Ctrl-C stops
# them all. `exec`: no shell in between, so make (which gets the Ctrl-C too) sees the supervisor
# exit 0 and prints no error; it still exits 130, as an interrupted make does. With no
# DATABASE_URL and no REDIS_URL this is the embedded mode: SQLite and a filesystem broker under .data/.
run: install
	$(PY) manage.py migrate --noinput
	@if [ -z "$$DATABASE_URL" ]; then $(PY) manage.py seed_demo; \
	else echo "DATABASE_URL is set: not adding the demo user and data (run manage.py seed_demo to add them)"; fi
	@exec $(PY) -m adsync.supervisor $(if $(filter-out 0,$(VERBOSE)),--verbose)

test: install test-postgres test-embedded

# The quick loop while working: everything but the tests that start real processes (marked slow).
test-fast: install
	$(TEST_ENV) $(VENV)/bin/pytest -m "not slow"

test-postgres:
	$(TEST_ENV) $(VENV)/bin/pytest

# The embedded mode's own SQL (SQLite upsert, claims without row locks) on the same tests.
test-embedded:
	env -u DATABASE_URL -u REDIS_URL ADSYNC_DATA_DIR=$$(mktemp -d) $(VENV)/bin/pytest -m embedded -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks are not tests: each prints its figures (see bench/README.md). They use a database
# (adsync_bench) and Redis db (12) of their own, never the test ones.
bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf .data .pytest_cache artifacts
