# Personalized recommendations with a live feedback loop. `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help install lock openapi demo demo-ci ingest pipeline tune report simulate bench bench-scale soak chaos test lint ui console serve clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The committed lock of `.[all,dev]` (infra/requirements/dev.txt, written by `make lock`) is what gets
# installed: the versions the tests ran, nothing resolved anew. torch is its CPU build, named exactly
# (2.13.0+cpu), from the PyTorch CPU index or a local wheel on PIP_FIND_LINKS.
DEV_LOCK := infra/requirements/dev.txt
TORCH := $(shell grep -m1 '^torch==' $(DEV_LOCK))
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(VENV)/.installed: pyproject.toml $(DEV_LOCK) | $(BIN)/python
	@# CPU torch first and alone: from the default index pip would take a multi-GB CUDA build. A local wheel
	@# (PIP_FIND_LINKS, pip's config) is used when there is one; otherwise the PyTorch CPU index is asked
	$(BIN)/pip install -q '$(TORCH)' 2>/dev/null || $(BIN)/pip install -q --extra-index-url $(TORCH_INDEX) '$(TORCH)'
	$(BIN)/pip install -q --no-deps -r $(DEV_LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $@

install: $(VENV)/.installed ## Create .venv and install the committed lock (CPU torch first) and the project, editable

lock: | $(BIN)/python ## After editing pyproject.toml: resolve it into .venv, then rewrite infra/requirements/*.txt from .venv
	@# pip keeps every installed version that still satisfies pyproject.toml and adds what is new
	$(BIN)/pip install -q -e '.[all,dev]' 2>/dev/null || $(BIN)/pip install -q --extra-index-url $(TORCH_INDEX) -e '.[all,dev]'
	$(BIN)/python infra/roles.py lock

openapi: install ## Rewrite docs/openapi.json from the API's code (commit it with the change that altered it)
	$(BIN)/python -m serving.openapi > docs/openapi.json

ingest: install ## Ingest the configured source only (no training): row counts, rejects and the EDA report's path
	$(BIN)/python -m recsys_assets ingest

pipeline: install ## Materialize the whole asset graph once and exit
	$(BIN)/python -m recsys_assets pipeline

# e.g. DEMO_ARGS="--replay-seconds 300" or, for a quick check, "--budget smoke --models Pop,EASE"
DEMO_ARGS ?=

demo: install ## The whole loop on MovieLens-100k: train on the past, serve every UI, replay the future (Ctrl-C stops all)
	$(BIN)/python -m recsys_assets demo $(DEMO_ARGS)

demo-ci: install ## The demo's steps non-interactively: replay, stop every service, exit non-zero on failure
	$(BIN)/python -m recsys_assets demo --ci $(DEMO_ARGS)

tune: install ## Budgeted hyper-parameter search (Optuna) on the temporal validation split; feeds the next pipeline
	$(BIN)/python -m recsys_assets tune

# e.g. REPORT_ARGS="--out /tmp/final --api-url http://api:8000"
REPORT_ARGS ?=
report: install ## Final report (HTML) and slide deck (.pptx) from the stored tables: <storage>/reports/final/
	$(BIN)/python -m recsys_assets report $(REPORT_ARGS)

# the benchmark's runs (docs/benchmarks.md): ml-100k with its Sci-Fi films launching at the shift;
# Taobao with its new items launching, lists that may repeat seen items (its re-views)
SIM_DATASET ?= ml-100k
SIM_ARGS_ml-100k := --hold-out-category Sci-Fi --models ItemKNN,EASE --duration 1200 --shifted-seconds 840
SIM_ARGS_taobao := --include-seen --models ItemKNN --duration 900 --shifted-seconds 540
SIM_ARGS ?= $(SIM_ARGS_$(SIM_DATASET))
simulate: install ## Closed-loop replay with a drift, measured (SIM_DATASET=ml-100k|taobao, SIM_ARGS)
	$(BIN)/python -m recsys_assets.tools.replay simulate --dataset $(SIM_DATASET) --settle-seconds 300 $(SIM_ARGS) \
		--workdir /tmp/recsys-simulate-$(SIM_DATASET)

bench: install ## Benchmarks: artifact vs RecBole scoring, the model comparison, the API under load (docs/benchmarks.md)
	$(BIN)/python -m recsys_assets.tools.benchmarks scoring --model BPR
	$(BIN)/python -m recsys_assets.tools.benchmarks scoring --model EASE
	$(BIN)/python -m recsys_assets.tools.benchmarks comparison --storage /tmp/recsys-bench
	@# drift in the API's log -> the new champion serving, under dagster dev (about 10 minutes)
	$(BIN)/python -m recsys_assets.tools.benchmarks loop --storage /tmp/recsys-bench-loop
	@# latency at 200/s, the rate ramp and wrk, batch ingestion, 1/2/4 workers (about 15 minutes)
	$(BIN)/python -m recsys_assets.tools.loadgen all --storage /tmp/recsys-apibench-data

SOAK_SECONDS ?= 1800
SOAK_RPS ?= 100
# a worker killed and Redis restarted mid-run; SOAK_FAULTS= for a soak without faults
SOAK_FAULTS ?= kill_worker,redis_restart
bench-scale: install ## The whole pipeline on synthetic shop logs of 1M and 10M events: time and peak RSS per stage
	$(BIN)/python -m recsys_assets.tools.benchmarks scale --storage /tmp/recsys-bench-scale $(SCALE_ARGS)

soak: install ## API soak: SOAK_RPS requests/s (100) for SOAK_SECONDS (1800), a worker killed and Redis restarted mid-run; availability >= 99.9%, memory growth < 10%
	$(BIN)/python -m recsys_assets.tools.loadgen soak --storage /tmp/recsys-apibench-data --rate $(SOAK_RPS) --duration $(SOAK_SECONDS) $(if $(SOAK_FAULTS),--faults $(SOAK_FAULTS))

CHAOS_SECONDS ?= 120
CHAOS_RPS ?= 100
chaos: install ## API chaos run: CHAOS_RPS requests/s while a worker is killed, Redis restarted, a damaged champion promoted
	$(BIN)/python -m recsys_assets.tools.chaos --rate $(CHAOS_RPS) --duration $(CHAOS_SECONDS) --out /tmp/recsys-chaos.json

ui: install ## Start the Dagster UI (webserver + daemon) on the configured port
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1

serve: install ## Start the API alone (uvicorn; host, port and workers from RECSYS_API_HOST/PORT/WORKERS)
	$(BIN)/python -m serving

console: install ## Start the Streamlit console alone (on settings.console_port)
	@# the port comes from the settings, so RECSYS_ENV_FILE applies as everywhere else
	$(BIN)/streamlit run console/app.py --server.address 127.0.0.1 --server.headless true \
		--browser.gatherUsageStats false --server.port \
		$$($(BIN)/python -c 'from recsys_assets.contract.settings import get_settings; print(get_settings().console_port)')

lint: install ## ruff check + format check, mypy (contract and serving), the architecture rules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_architecture.py

test: lint ## Lint, then the whole test suite (starts Azurite, Chromium as needed)
	$(BIN)/python -m pytest

clean: ## Remove local data, Dagster home and caches (keeps .venv)
	rm -rf data .dagster_home .pytest_cache .ruff_cache .mypy_cache
