# Every user-facing target creates .venv and installs the pinned dependencies on first use.
# `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev
# TensorFlow's build: cpu (tensorflow-cpu: no CUDA code, so no CUDA start-up errors on a machine
# without a GPU) or gpu (the CUDA build; the Docker image installs it itself).
TF ?= cpu
# The stamp names the hash of pyproject.toml and constraints.txt: editing either reinstalls.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt 2>/dev/null | sha1sum | cut -c1-12)-$(subst $(comma),_,$(EXTRAS))-$(TF)
comma := ,

# Study variables (see README): empty means "the study file's value" or the embedded default.
NAME ?=
DATASET ?=
DATA_DIR ?=
STORAGE ?=
WORKERS ?= 1
TRIALS ?=
EPOCHS ?=
PROFILE ?=
PORT ?= 8080
N ?= 4
# Extra flags for a bench target's script, e.g. BENCH_ARGS="--compare checkpoints" (see its --help).
BENCH_ARGS ?=

export KERAS_BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL ?= 2
export DATA_DIR STORAGE

STUDY_ARGS = $(if $(DATASET),--dataset $(DATASET)) $(if $(TRIALS),--trials $(TRIALS)) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(PROFILE),--profile $(PROFILE))

.PHONY: help venv study status evaluate refit report dashboard tensorboard test-tools worker workers models test test-faults test-fast bench-data bench-search bench-gpu bench-storage bench-decode bench-breakdown bench-current bench-pareto bench-confirm bench-recipe bench-finetune bench-outage bench-peers proxy-secrets up down clean require-name

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: NAME DATASET DATA_DIR STORAGE WORKERS TRIALS EPOCHS PROFILE=smoke PORT N BENCH_ARGS"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# Both builds install the same `tensorflow` module and pip does not see them collide: one, never both.
	$(PY) -m pip uninstall --quiet --yes tensorflow tensorflow-cpu 2>/dev/null || true
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS),$(TF)]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create .venv and install the pinned dependencies

require-name:
	@test -n "$(NAME)" || { echo "NAME is required, e.g. make $(MAKECMDGOALS) NAME=fc_head (studies: $$(ls search/studies | sed 's/.yaml//' | tr '\n' ' '))"; exit 2; }

study: $(STAMP) require-name ## create study NAME (idempotent) and run WORKERS workers until its budget is met
	$(PY) -m search run $(NAME) --workers $(WORKERS) $(STUDY_ARGS)

status: $(STAMP) require-name ## readable summary of study NAME
	$(PY) -m search status $(NAME)

worker: $(STAMP) require-name ## run one worker for study NAME (the study must exist; STAGE=confirm: its confirmation stage)
	$(PY) -m search.worker $(NAME) $(STUDY_ARGS) $(if $(STAGE),--stage $(STAGE))

workers: $(STAMP) require-name ## run N workers for study NAME as separate processes
	$(PY) -m search run $(NAME) --workers $(N) --no-create $(STUDY_ARGS) $(if $(STAGE),--stage $(STAGE))

evaluate: $(STAMP) require-name ## confirm study NAME's 5 best trials over 3 seeds each (WORKERS in parallel), then test the pick once
	$(PY) -m search evaluate $(NAME) $(STUDY_ARGS) $(if $(WORKERS),--workers $(WORKERS))

refit: $(STAMP) require-name ## train study NAME's best configuration on all the training data into OUT (no test)
	$(PY) -m search refit $(NAME) $(STUDY_ARGS) --output $(or $(OUT),artifacts/$(NAME)-refit.keras)

report: $(STAMP) require-name ## write reports/NAME/index.html (offline, plotly embedded)
	$(PY) -m dashboards.report $(NAME)

dashboard: $(STAMP) ## optuna-dashboard on the study store at http://127.0.0.1:$(PORT)
	$(PY) -m dashboards.launcher --port $(PORT)

tensorboard: $(STAMP) require-name ## TensorBoard for study NAME at http://127.0.0.1:6006 (scalars and HParams, exported from the store)
	$(PY) -m dashboards.tensorboard_export $(NAME) --serve --port 6006

models: $(STAMP) ## table of presets and parameter counts for DATASET (default cifar10)
	$(PY) -m dashboards.models_table --dataset $(or $(DATASET),cifar10)

# The browser test drives Debian's chromium headless and the compose test validates the file with
# Debian's docker-compose: install whichever is missing (root only; no Docker engine is needed).
TEST_TOOLS := chromium:chromium docker-compose:docker-compose
test-tools:
	@missing=$$(for t in $(TEST_TOOLS); do command -v $${t%%:*} >/dev/null || echo $${t#*:}; done); \
	  [ -z "$$missing" ] && exit 0; \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	  || { echo "the tests need: $$missing (apt-get install $$missing)"; exit 1; }

# checkov (a policy scanner for the Kubernetes manifests and the Dockerfile) in a virtual environment
# of its own: its pins (boto3, networkx...) are not the service's.
CHECKOV_VERSION := 3.3.30
CHECKOV := .venv-tools/bin/checkov
$(CHECKOV):
	@test -x .venv-tools/bin/python || $(PYTHON) -m venv .venv-tools
	.venv-tools/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)

# The suite in three runs: everything but tests/e2e on both cores (pytest-xdist, a test file per worker, so a
# file's tests never race each other); the end-to-end studies on both cores too, a file per worker; then the
# fault matrix one test at a time (tests/conftest.py's `serial`: it stops PostgreSQL, kills workers and
# times heartbeats against a grace period, which a second test on the same cores would skew).
test: $(STAMP) test-tools $(CHECKOV) ## the import contract (pyproject.toml, [tool.importlinter]), then the whole test suite
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile --durations=10
	$(PY) -m pytest -q -m "slow and not serial" -n 2 --dist loadfile --durations=10
	$(PY) -m pytest -q -m "slow and serial" --durations=15

test-faults: $(STAMP) ## only the fault matrix on PostgreSQL (README, "Reliability"); make test runs it too
	$(PY) -m pytest -q tests/e2e/test_service.py tests/e2e/test_faults.py

test-fast: $(STAMP) $(CHECKOV) ## the inner-loop tier: no end-to-end studies, no PostgreSQL, no browser (no service needs to run)
	$(PY) -m pytest -q -m "not slow and not postgres and not browser"

bench-data: $(STAMP) ## augmentation throughput vs ImageDataGenerator; appends to BENCHMARKS.md
	$(PY) -m benchmarks.data --data-dir $(or $(DATA_DIR),../shared/datasets) $(BENCH_ARGS)

bench-search: $(STAMP) ## random search vs TPE+Hyperband on fc_head's cached features; appends to BENCHMARKS.md
	$(PY) -m benchmarks.search --data-dir $(or $(DATA_DIR),../shared/datasets) $(BENCH_ARGS)

bench-gpu: $(STAMP) ## GPU placement, packing and GPU memory across trials (needs a GPU); appends to BENCHMARKS.md
	$(PY) -m benchmarks.gpu --data-dir $(or $(DATA_DIR),../shared/datasets) $(BENCH_ARGS)

bench-storage: $(STAMP) ## ask/tell latency and worker scaling on the local PostgreSQL; appends to BENCHMARKS.md
	$(PY) -m benchmarks.storage $(BENCH_ARGS)

bench-decode: $(STAMP) ## decode 100,000 generated 64x64 images of one's own (peak RSS vs the arrays, time), then 4 workers training on them: summed PSS, streamed vs copied; appends to BENCHMARKS.md
	$(PY) -m benchmarks.decode $(BENCH_ARGS)

bench-breakdown: $(STAMP) ## where a trial's time goes (simple_cnn smoke, fc_head-like, full data) and what each overhead change saves; appends to BENCHMARKS.md
	$(PY) -m benchmarks.breakdown --data-dir $(or $(DATA_DIR),../shared/datasets) $(BENCH_ARGS)

bench-pareto: $(STAMP) ## a two-objective study pruned on its first objective vs not pruned: epochs and the Pareto front's best accuracy; appends to BENCHMARKS.md
	$(PY) -m benchmarks.pareto --data-dir $(or $(DATA_DIR),../shared/datasets) $(BENCH_ARGS)

bench-confirm: $(STAMP) ## fc_head quick: the test accuracy of the top-1 pick against the top-5 confirmed on 2 workers, and its cost; appends to BENCHMARKS.md
	$(PY) -m benchmarks.confirm --data-dir $(or $(DATA_DIR),../shared/datasets) $(BENCH_ARGS)

bench-recipe: $(STAMP) ## simple_cnn on full CIFAR-10, seed 001's recipe vs cosine + warm-up + label smoothing + RandAugment: accuracy and time an epoch; appends to BENCHMARKS.md
	$(PY) -m benchmarks.recipe --data-dir $(or $(DATA_DIR),../shared/datasets) $(BENCH_ARGS)

bench-finetune: $(STAMP) ## fc_head_ft quick: the head search alone vs head search + fine-tuning its 5 best heads, best validation accuracy and wall time; appends to BENCHMARKS.md
	$(PY) -m benchmarks.fine_tune --data-dir $(or $(DATA_DIR),../shared/datasets) $(BENCH_ARGS)

bench-outage: $(STAMP) ## PostgreSQL stopped twice under a running study for 0.5x-5x the grace period: trials reaped, retries, lineages given up (stops this machine's cluster; root); appends to BENCHMARKS.md
	$(PY) -m benchmarks.outage --data-dir $(or $(DATA_DIR),../shared/datasets) $(BENCH_ARGS)

bench-peers: $(STAMP) ## this service vs a plain Optuna script vs Keras Tuner's Hyperband at the same wall-clock budget, fc_head quick and simple_cnn full data; appends to BENCHMARKS.md
	$(PY) -m benchmarks.peers --data-dir $(or $(DATA_DIR),../shared/datasets) $(BENCH_ARGS)

bench-current: $(STAMP) ## rewrite BENCHMARKS.md's current-figures table from its history (every bench target does this too)
	$(PY) -m benchmarks.current

COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

proxy-secrets: ## the storage proxy's CA, certificate, key and token into OUT (default: the proxy overlay's ignored secrets/)
	sh deploy/proxy-secrets.sh $(or $(OUT),deploy/kubernetes/overlays/proxy/secrets)

up: require-name ## one GPU box: PostgreSQL, study creation, WORKERS GPU workers and the dashboard (docker compose)
	@test -f .env || { echo "copy .env.example to .env first"; exit 2; }
	@for f in postgres_password worker_password dashboard_password; do test -s secrets/$$f || { echo "put a password in secrets/$$f (e.g. openssl rand -hex 24 > secrets/$$f): the owner's, the workers' role's, the dashboard role's"; exit 2; }; done
	STUDY=$(NAME) $(COMPOSE) up -d --build --scale worker=$(WORKERS)

down: ## stop the compose services (volumes are kept)
	$(COMPOSE) down

clean: ## remove caches and generated files (not .venv)
	rm -rf .cache .pytest_cache reports bench-out test-output
	find . -name __pycache__ -not -path './.venv/*' -exec rm -rf {} +
