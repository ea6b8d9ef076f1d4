# pqh: every command a user needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STAGE ?= dev

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 18

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "pip>=24,<26.3"   # chalice 1.34 needs pip < 26.3
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .   # the `pqh` command
	@touch $(STAMP)

# dynalite, the local DynamoDB emulator, from npm into local/node/. `make test` needs it;
# `make run` uses it when npm is there, and moto's DynamoDB otherwise (it says so).
DYNALITE_STAMP := local/node/node_modules/.installed
$(DYNALITE_STAMP): local/node/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: the tests' DynamoDB emulator (dynalite) needs Node.js 20+ and npm"; exit 1; }
	npm ci --prefix local/node --no-audit --no-fund --loglevel=error
	@touch $@

dynalite-if-npm:
	@if command -v npm >/dev/null; then $(MAKE) -s --no-print-directory $(DYNALITE_STAMP); fi

venv: $(STAMP) dynalite-if-npm ## create .venv and install the pinned dependencies (and dynalite from npm into local/node/, when npm is there)

# Three pytest-xdist workers: much of the suite waits (compressed AWS timeouts in the
# chaos runs, local systems starting), so three overlap well on two cores.
TEST_WORKERS ?= 3
test: $(STAMP) $(DYNALITE_STAMP) browser localstack-tier ## run the whole suite (unit, contract, functional, end-to-end, LocalStack, the dashboard in Chromium)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# LocalStack's runtime (localstack-core, pinned in requirements-localstack.txt) in a
# virtualenv of its own on Python 3.13; the tests start it on a free loopback port.
LS_VENV := .venv-localstack
LS_STAMP := $(LS_VENV)/.installed
PYTHON313 ?= $(shell for p in python3.13 $$HOME/.pyenv/versions/3.13*/bin/python3.13; do \
  $$p -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null && { echo $$p; break; }; done)

$(LS_STAMP): requirements-localstack.txt
	@test -n "$(PYTHON313)" || { echo "LocalStack's runtime needs Python 3.13: put python3.13 on PATH or set PYTHON313"; exit 1; }
	@test -x $(LS_VENV)/bin/python || $(PYTHON313) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-localstack.txt
	@touch $@

localstack-venv: $(LS_STAMP) ## install LocalStack's runtime into .venv-localstack (Python 3.13, about 0.5 GB)

# `make test` installs it when it can; without it the LocalStack tests skip, unless
# PQH_REQUIRE_LOCALSTACK is set (CI sets it), when this fails.
localstack-tier:
	@$(MAKE) -s --no-print-directory $(LS_STAMP) || { test -z "$$PQH_REQUIRE_LOCALSTACK" && \
	  echo "could not install LocalStack's runtime: the LocalStack tests will be skipped"; }

LOCALSTACK_PORT ?= 4566
localstack: $(STAMP) $(LS_STAMP) ## run LocalStack's runtime on 127.0.0.1:4566 without Docker (SQS, IAM, API Gateway, ...)
	$(BIN)/python -m local.localstack $(LOCALSTACK_PORT)

LOCALSTACK_URL ?= http://127.0.0.1:4566
deploy-localstack: $(STAMP) ## chalice deploy of the dev stage to a freshly started `make localstack` (functions stay Failed: no Docker)
	AWS_ENDPOINT_URL=$(LOCALSTACK_URL) AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 \
	  PQH_AUTH=$$($(BIN)/python -m infra.iam --auth $(STAGE)) $(BIN)/python -m infra.deploy_rehearsal --stage $(STAGE)

# Debian's chromium, for the dashboard's browser test (Playwright drives it; it never downloads one).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser: ## install Debian's chromium if it is missing (the dashboard test needs it)
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the dashboard test"; \
	  $(SUDO) apt-get -o DPkg::Lock::Timeout=300 update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium >/dev/null \
	  || { echo "could not install Debian's chromium: the dashboard's browser test cannot run" >&2; exit 1; }; }

lint: $(STAMP) ## ruff (lint and format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

package: $(STAMP) ## build the CloudFormation/SAM template for AWS into build/ and cfn-lint it
	$(BIN)/python -m infra.merge_template $(STAGE) > build-merge.json.tmp
	mkdir -p build && mv build-merge.json.tmp build/merge-template.json
	rm -rf build/package
	@# Routes carry the API-key authorizer when app.py is imported with the stage's PQH_AUTH.
	PQH_AUTH=$$($(BIN)/python -m infra.iam --auth $(STAGE)) AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} \
	  $(BIN)/chalice package --stage $(STAGE) --merge-template build/merge-template.json build/package
	$(BIN)/cfn-lint build/package/sam.json
	@echo "template: build/package/sam.json"

clean: ## remove build output and caches
	rm -rf build .pytest_cache .mypy_cache .ruff_cache

.PHONY: help venv dynalite-if-npm test browser lint format package clean localstack-venv localstack-tier localstack deploy-localstack

bench: $(STAMP) $(DYNALITE_STAMP) ## benchmarks: cost of one AWS call, start delay, utilisation, SQS depth, AWS requests per task, submit/dispatch at depth 0-10,000 (tables; bench/results/)
	$(BIN)/python -m bench.emulator_calls
	$(BIN)/python -m bench.dispatch
	$(BIN)/python -m bench.sqs_depth
	$(BIN)/python -m bench.requests_per_task
	$(BIN)/python -m bench.deep

bench-fairness: $(STAMP) $(DYNALITE_STAMP) ## fairness benchmark: 5 workloads x fifo/strict/fair/priority, tables and plots in bench/results/
	$(BIN)/python -m bench.fairness

bench-scale: $(STAMP) ## scale model of one AWS deployment: the envelope (capacity x task length) checked by a real 50-slot run (docs/scaling.md); QUICK=1: under a minute
	$(BIN)/python -m bench.scale $(if $(QUICK),--quick)

run: $(STAMP) dynalite-if-npm ## start the whole system locally (emulators, API on :8000, dispatcher, workers)
	$(BIN)/python -m local.run

chaos: $(STAMP) ## submit tasks while injecting crashes, throttling, duplicates and poison; report lost/run-twice
	$(BIN)/python -m bench.chaos

mutation: $(STAMP) $(DYNALITE_STAMP) ## mutation testing (mutmut) of the policy, validation and the services; kill rates per module
	rm -rf mutants && mkdir -p build
	$(BIN)/mutmut run --max-children 2 > build/mutation.log 2>&1 || { tail -c 2000 build/mutation.log; exit 1; }
	$(BIN)/python -m bench.mutation

.PHONY: run bench bench-fairness bench-scale chaos mutation
