# Two commands for a new user: `make run` and `make test`. Both need only Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test mutate bench bench-admin lint clean

$(VENV)/.installed: requirements/base.txt requirements/prod.txt requirements/dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $@

## Set everything up and run the service (web, worker, beat; the emulator without a key).
run: $(VENV)/.installed
	$(PY) scripts/run.py

## Set everything up and run the whole test suite.
## PYTEST_ARGS adds options (CI adds branch coverage with its floor: .ci/run).
test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

## Mutation testing, each module against its own tests (docs/testing.md); MODULE=path for one.
MODULE ?=
mutate: $(VENV)/.installed
	$(PY) scripts/mutate.py $(MODULE)

## Benchmarks (need local PostgreSQL and Redis); results go in docs/benchmarks.md.
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
BENCH_REDIS_URL ?= redis://127.0.0.1:6379/3
bench: $(VENV)/.installed
	$(PY) bench/emulator_throughput.py
	DATABASE_URL=$(BENCH_DATABASE_URL) $(PY) bench/broker_throughput.py
	DATABASE_URL=$(BENCH_DATABASE_URL) $(PY) bench/aggregate.py
	DATABASE_URL=$(BENCH_DATABASE_URL) REDIS_URL=$(BENCH_REDIS_URL) $(PY) bench/alert_latency.py
	DATABASE_URL=$(BENCH_DATABASE_URL) REDIS_URL=$(BENCH_REDIS_URL) $(PY) bench/compare.py
	$(PY) bench/wrk_ceiling.py
	DATABASE_URL=$(BENCH_DATABASE_URL) $(PY) bench/load_faults.py --kill-redis-at 0.5
	$(PY) bench/fault_table.py
	$(PY) bench/metrics_cost.py

## The audit admin over 10,000,000 rows and the dashboard over 90 days (issue 9). Not in `bench`: seeding takes about six
## minutes the first time (the rows stay in broker_bench_admin and later runs reuse them).
bench-admin: $(VENV)/.installed
	DATABASE_URL=$(BENCH_DATABASE_URL) $(PY) bench/admin_audit.py
	DATABASE_URL=$(BENCH_DATABASE_URL) $(PY) bench/admin_dashboard.py

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
