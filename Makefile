# The two commands: `make run` (try AdSync on this machine) and `make test` (the whole suite).
# CI (.ci/run) calls `make test` and `make lint`.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CELERY := $(VENV)/bin/celery
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)

# Tests run on PostgreSQL and Redis; override these to point elsewhere.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/adsync
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
TEST_ENV := DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) SECRET_KEY=test-only-secret

.PHONY: install run test test-postgres test-embedded lint format bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Web + worker + dispatcher + beat in one foreground command; Ctrl-C stops them all. With no DATABASE_URL
# and no REDIS_URL this is the embedded mode: SQLite and a filesystem broker under .data/.
run: install
	$(PY) manage.py migrate --noinput
	@if [ -z "$$DATABASE_URL" ]; then $(PY) manage.py seed_demo; \
	else echo "DATABASE_URL is set: not adding the demo user and data (run manage.py seed_demo to add them)"; fi
	@echo
	@echo "  AdSync is starting at http://127.0.0.1:8000/settings  (sign in: demo / demo)"
	@echo "  Admin: http://127.0.0.1:8000/admin/   Ctrl-C stops web, worker and beat."
	@echo
	@trap 'kill 0' INT TERM; \
	$(CELERY) -A adsync worker -Q sync_jobs --concurrency 2 --loglevel INFO --hostname sync@%h & \
	$(CELERY) -A adsync worker -Q dispatch --concurrency 1 --loglevel INFO --hostname dispatch@%h & \
	$(CELERY) -A adsync beat --scheduler django --loglevel INFO & \
	DEBUG=$${DEBUG:-1} $(PY) manage.py runserver 127.0.0.1:8000 & \
	wait

test: install test-postgres test-embedded

test-postgres:
	$(TEST_ENV) $(VENV)/bin/pytest

# The embedded mode's own SQL (SQLite upsert, claims without row locks) on the same tests.
test-embedded:
	env -u DATABASE_URL -u REDIS_URL ADSYNC_DATA_DIR=$$(mktemp -d) $(VENV)/bin/pytest -m embedded -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks are not tests: each prints its figures (see bench/README.md). They use a database
# (adsync_bench) and Redis db (12) of their own, never the test ones.
bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf .data .pytest_cache artifacts
