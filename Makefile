# beiflow: `make demo` and `make test` do all set-up themselves (scripts/setup.sh:
# venv, Mosquitto, PostgreSQL + TimescaleDB, .beiflow/env). See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
# Export what scripts/setup.sh wrote (BEIFLOW_ADMIN_DSN, BEIFLOW_PG_PORT, BEIFLOW_MOSQUITTO, ...)
ENV := set -a; . .beiflow/env; set +a

.PHONY: help setup test lint demo bench clean

help:
	@echo "make demo    set up, then run the whole pipeline with simulated devices"
	@echo "make test    set up, then lint and run the whole test suite"
	@echo "make setup   only the set-up (idempotent; scripts/setup.sh --dry-run shows the plan)"
	@echo "make lint    ruff, and check the shipped Mosquitto config with a real broker"
	@echo "make bench   run the benchmarks"
	@echo "make clean   remove .venv and .beiflow"

setup:
	scripts/setup.sh

test: setup
	$(ENV); $(VENV)/bin/ruff check .
	$(ENV); $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	bash -n scripts/setup.sh scripts/check-mosquitto-conf.sh .ci/run
	$(ENV); scripts/check-mosquitto-conf.sh

demo: setup
	$(ENV); export BEIFLOW_DB_DSN="$${BEIFLOW_DB_DSN:-$$BEIFLOW_DEMO_DSN}"; \
	$(VENV)/bin/beiflow db migrate && exec $(VENV)/bin/beiflow demo

bench: setup
	$(ENV); cd bench && for b in backlog streams nmea_decode json_decode geofence detectors evaluate; do \
		echo "== bench/$$b.py"; ../$(PY) $$b.py; done

clean:
	rm -rf $(VENV) .beiflow
