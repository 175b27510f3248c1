# customer-store: the newcomer's and developer's tasks (GNU make).
#
#   make run    install into a virtualenv, migrate customers.db, import the samples, print one
#   make test   install with the dev tools, run the fast tests on every core (PYTEST_ARGS passed on)
#   make test-slow  the slow end-to-end tests, one at a time (CI runs both; docs/testing.md)
#   make test-all   both
#   make lint   ruff check + mypy
#   make bench  the store against raw PostgreSQL baselines (BENCH_ARGS passed on)
#   make clean  remove the virtualenv, customers.db and caches
#
# Every variable can be set on the command line: `make test VENV=/tmp/venv PYTEST_ARGS=-x`.

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: one per core ("auto"), or a number, or 0 for none.
TEST_WORKERS ?= auto
SAMPLES ?= samples/customers.jsonl
# Jane Smith, a full customer (address, summary, loyalty campaigns, referrals) from the samples.
SAMPLE_ID ?= cust_X0hU04x7FeisPnD5lctZcQkI

BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -q
# Written after the editable dev install; `make run` removes it, because its regular install
# replaces the editable one and the next `make test` must put that back.
DEV_STAMP := $(VENV)/.dev-installed

.DEFAULT_GOAL := help
.PHONY: help run dev test test-slow test-all lint bench clean

help:
	@echo "make run    install, migrate customers.db, import $(SAMPLES), print $(SAMPLE_ID)"
	@echo "make test   run the fast tests in parallel, a few minutes (PostgreSQL at"
	@echo "            127.0.0.1:5432 or CUSTOMER_STORE_TEST_POSTGRES_URL, where it creates and"
	@echo "            drops cstest_* databases; PYTEST_ARGS='...' is passed to pytest)"
	@echo "make test-slow  the slow end-to-end tests (clusters, failover, PgBouncer, processes),"
	@echo "            one at a time; CI runs test and test-slow (docs/testing.md)"
	@echo "make test-all   test, then test-slow"
	@echo "make lint   ruff check and mypy"
	@echo "make bench  benchmark on a throwaway PostgreSQL database (docs/benchmarks.md)"
	@echo "make clean  remove $(VENV), customers.db and caches"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# A regular (non-editable) install, so that what runs is the installed copy, as in production.
# The database is $$DATABASE_URL if set, else sqlite:///customers.db in this directory.
run: | $(BIN)/python
	rm -rf build  # setuptools would package stale files left in build/lib
	$(PIP_INSTALL) .
	rm -f $(DEV_STAMP)
	$(BIN)/customer-store migrate
	$(BIN)/customer-store import $(SAMPLES)
	$(BIN)/customer-store get $(SAMPLE_ID)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[dev]'
	touch $@

dev: $(DEV_STAMP)

# The fast set (everything not marked slow) in parallel; the slow set alone, so that tests that
# measure time or start servers are not squeezed by other workers.
test: $(DEV_STAMP)
	$(BIN)/pytest -m "not slow" -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-slow: $(DEV_STAMP)
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

test-all: test test-slow

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .

BENCH_ARGS ?=
bench: $(DEV_STAMP)
	$(BIN)/python -m bench.store_bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build customers.db customers.db-wal customers.db-shm
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
	find models repository migrations customer_store tests -name __pycache__ -type d \
		-prune -exec rm -rf {} +
