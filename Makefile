# lit_tuning: `make help` lists the targets. Every target sets up .venv first if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed before the project so that pip never picks a build on its own.
# CPU (default): torch==$(TORCH_VERSION) from the machine's wheels or PyPI's index.
# GPU: make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
# CPU machine with internet: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
CONFIG ?= configs/base.yaml
ARGS ?=
PYTEST_ARGS ?=
MLFLOW_PORT ?= 5000
DASHBOARD_PORT ?= 8080
MLFLOW_STORE ?= sqlite:///$(CURDIR)/results/tuning/mlflow.db
WANDB_DIR_RUNS ?= results/tuning/wandb
WANDB_SYNC_FLAGS ?=
SPACE ?= configs/hyperparameters/search_spaces/default.yaml
STORAGE ?= sqlite:///results/tuning/optuna.db
SWEEP_ARGS ?=
STUDY ?=
STUDIES ?=
TOP_K ?= 2
SEEDS ?= 3

.DEFAULT_GOAL := help
.PHONY: help install fit base-model test test-slow test-all lint format clean-runs mlflow-ui dashboard wandb-sync bench bench-tracking bench-sweep chaos bench-search bench-search-record bench-hardware gpu-check

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv and install lit_tuning with its dev tools

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev,dashboard]"
	# W&B's sweep schema and checks; --no-deps: its numpy<2 pin is for search code lit_tuning does not use
	$(BIN)/python -m pip install -q --no-deps "sweeps==0.3.0"
	touch $@

fit: install ## Train one LoRA run: make fit [CONFIG=configs/base.yaml] [ARGS="--model.lora_r 8"]
	$(BIN)/python -m lit_tuning fit --config $(CONFIG) $(ARGS)

base-model: install ## Build (or find cached) the embedded offline base model
	$(BIN)/python -c "from lit_tuning.train.base_model import resolve_model_path; print(resolve_model_path('embedded:tiny'))"

test: install ## Everyday test suite (offline; ~500 tests, ~8 min on 2 cores)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install ## Heavier end-to-end tests (the default config, the real base model)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: install ## Both suites, the slow end-to-end tests too: what CI runs (~50 min on 2 cores)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install ## ruff check and format check
	$(BIN)/ruff check lit_tuning tests
	$(BIN)/ruff format --check lit_tuning tests

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix lit_tuning tests
	$(BIN)/ruff format lit_tuning tests

mlflow-ui: install ## Browse every run: MLflow UI on http://127.0.0.1:$(MLFLOW_PORT) [MLFLOW_PORT=5000]
	@# mlflow ui would create (or migrate) a store at a mistyped or not-yet-written SQLite path: refuse instead
	@$(BIN)/python -m lit_tuning.sweep.store_check mlflow MLFLOW_STORE '$(MLFLOW_STORE)'
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) \
		--workers 1 --backend-store-uri '$(MLFLOW_STORE)'

dashboard: install ## Optuna's live view of the studies in STORAGE on http://127.0.0.1:$(DASHBOARD_PORT) [DASHBOARD_PORT=8080]
	@# optuna-dashboard would create an empty database at a mistyped or not-yet-swept SQLite path: refuse instead
	@$(BIN)/python -m lit_tuning.sweep.store_check optuna STORAGE '$(STORAGE)'
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) '$(STORAGE)'

wandb-sync: install ## Upload offline W&B runs (needs `wandb login` or WANDB_API_KEY)
	@ls -d $(WANDB_DIR_RUNS)/offline-run-* >/dev/null 2>&1 || { echo "no offline W&B runs in $(WANDB_DIR_RUNS)"; exit 0; }
	$(BIN)/wandb sync --skip-synced $(WANDB_SYNC_FLAGS) $(WANDB_DIR_RUNS)/offline-run-*

bench: bench-tracking bench-sweep bench-hardware ## All benchmarks (figures under results/tuning/bench); run on a quiet machine

bench-tracking: install ## Step-time cost of MLflow / W&B logging on the default fit
	$(BIN)/python -m lit_tuning.bench.tracking

bench-sweep: install ## Study throughput with 1 and 2 worker processes (through the real sweep driver)
	$(BIN)/python -m lit_tuning.bench.sweep

CHAOS_ARGS ?=
chaos: install ## SIGKILL a micro study's workers and driver 20 times, re-run it, check nothing was lost (results/tuning/bench/chaos.json)
	$(BIN)/python -m lit_tuning.bench.chaos --kills 20 $(CHAOS_ARGS)

bench-search: install ## Replay search strategies on benchmarks/search/table.csv (compute to the best), one process per core, and check the report's claims
	$(BIN)/python -m lit_tuning.bench.search $(ARGS)
	$(BIN)/python -m lit_tuning.bench.claims

# At the lowest priority, so the recording can run beside other work (steps, not seconds, are what it records);
# one 1-thread worker by default, ARGS="--workers 2" on a quiet 2-core machine; re-run to resume.
bench-search-record: install ## Record (or resume) the benchmark table through the real sweep (6 stages, 39 runs)
	nice -n 19 $(BIN)/python -m lit_tuning.bench.search_table $(ARGS)

bench-hardware: install ## fit vs bare lean loop, cold vs warm trials (SmolLM2-135M-shaped), CPU worker plans [ARGS=--quick]
	$(BIN)/python -m lit_tuning.bench.hardware $(ARGS)

gpu-check: install ## bf16 studies of SmolLM2-135M/Qwen2.5-0.5B-shaped models on the GPUs: tokens/s, MFU, memory, trials/h
	$(BIN)/python -m lit_tuning.bench.gpu_check $(ARGS)

.PHONY: sweep status
sweep: install ## Run (or resume) a study: make sweep [SPACE=...yaml STUDY=name STORAGE=url SWEEP_ARGS="--workers 2"]
	$(BIN)/python -m lit_tuning.sweep --search-space $(SPACE) --storage "$(STORAGE)" $(if $(STUDY),--study "$(STUDY)") $(SWEEP_ARGS)

status: install ## Live trials table of a study: make status [STUDY=name; default the latest]
	$(BIN)/python -m lit_tuning.sweep status --storage "$(STORAGE)" $(if $(STUDY),--study "$(STUDY)")

.PHONY: report confirm report-compare
report: install ## Figures, tables and HTML report of a study: make report [STUDY=name; default the latest]
	$(BIN)/python -m lit_tuning.analysis.report --storage "$(STORAGE)" $(if $(STUDY),--study "$(STUDY)") $(ARGS)

confirm: install ## Re-run a study's top configs and its base config over seeds: make confirm STUDY=name [TOP_K=2 SEEDS=3]
	$(BIN)/python -m lit_tuning.analysis.confirm --storage "$(STORAGE)" $(if $(STUDY),--study "$(STUDY)") --top-k $(TOP_K) --seeds $(SEEDS) $(ARGS)

report-compare: install ## One HTML report comparing studies: make report-compare STUDIES="a b"
	@test -n "$(STUDIES)" || { echo 'STUDIES is empty; allowed: STUDIES="study_a study_b"' >&2; exit 2; }
	$(BIN)/python -m lit_tuning.analysis.report --storage "$(STORAGE)" --compare $(STUDIES) $(ARGS)

clean-runs: ## Delete run directories under results/tuning/runs
	rm -rf results/tuning/runs
