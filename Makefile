# kdbuckets — every target builds what it needs; nothing relies on the machine's Python packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.stamp
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/shared:$(CURDIR)

TOOLS_VENV := .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.stamp-requirements-tools
SAM := $(TOOLS_VENV)/bin/sam
CFN_LINT := $(TOOLS_VENV)/bin/cfn-lint
# SAM CLI: no telemetry (this machine reaches package registries only).
export SAM_CLI_TELEMETRY := 0

FN ?= query
EVENT ?= events/query_basic.json

.DEFAULT_GOAL := help
.PHONY: help venv demo demo-large test test-slow lint format invoke package bench tools-venv validate build deploy clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

venv: $(VENV_STAMP) ## create .venv with the pinned dependencies (rebuilt when a requirements file changes)

$(VENV_STAMP): requirements-dev.txt requirements-invoke.txt shared/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: $(VENV_STAMP) ## build an index and query it on an embedded moto S3; prints neighbours, predictions, recall
	$(PY) -m devtools.demo

demo-large: $(VENV_STAMP) ## distributed build of 2M × 128 vectors (16 shards) through the state machine on moto; recall, GET rounds, bytes, time, peak memory (~10 min; DEMO_LARGE_ARGS="--n 100000")
	$(PY) -m devtools.demo_large $(DEMO_LARGE_ARGS)

test: $(VENV_STAMP) ## run the test suite (unit + functional, moto in-process and over HTTP)
	$(PY) -m pytest -q -n 2 -m "not slow"

test-slow: $(VENV_STAMP) ## also run the slow tests (full real-dataset build with peak memory)
	$(PY) -m pytest -q -m slow -s

lint: $(VENV_STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV_STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

invoke: $(VENV_STAMP) ## run one handler with one event through awslambdaric: make invoke FN=query EVENT=events/query_basic.json (demo index cached; INVOKE_ARGS=--rebuild; own S3: AWS_ENDPOINT_URL_S3 + INDEX_BUCKET)
	$(PY) -m devtools.invoke $(FN) $(EVENT) $(INVOKE_ARGS)

package: $(VENV_STAMP) ## build the kdbuckets library wheel into dist/ (pip install dist/kdbuckets-*.whl)
	$(PY) -m pip wheel . -w dist --no-deps --quiet --disable-pip-version-check
	rm -rf build shared/kdbuckets.egg-info
	@ls dist/kdbuckets-*.whl

BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.stamp

$(BENCH_STAMP): bench/requirements.txt requirements-dev.txt requirements-invoke.txt shared/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

bench: $(BENCH_STAMP) ## benchmarks vs FAISS IVF-Flat → bench/REPORT.md + plots (not tests; ~15 min)
	$(BENCH_VENV)/bin/python -m bench.run

tools-venv: $(TOOLS_STAMP) ## create .venv-tools (SAM CLI, cfn-lint); SAM pins its own boto3

$(TOOLS_STAMP): requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-tools.txt
	touch $@

validate: $(TOOLS_STAMP) ## lint the SAM template (cfn-lint, then sam validate --lint)
	$(CFN_LINT) template.yaml --append-rules cfn_lint_serverless.rules
	$(SAM) validate --lint --template-file template.yaml

build: $(TOOLS_STAMP) ## sam build: functions and layer into .aws-sam/ (Makefile builds; no Docker)
	$(SAM) build --template-file template.yaml

deploy: build ## deploy to AWS interactively (sam deploy --guided; needs AWS credentials)
	$(SAM) deploy --guided

clean: ## remove virtualenvs, build output and caches
	rm -rf $(VENV) $(TOOLS_VENV) .venv-bench .aws-sam .pytest_cache .ruff_cache .hypothesis bench/out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: serve openapi
serve: $(VENV_STAMP) ## the HTTP API on localhost (curl localhost:8000/collections/tiny) against an embedded moto S3; SERVE_ARGS="--port 9000 --sample"
	$(PY) -m devtools.serve $(SERVE_ARGS)

openapi: $(VENV_STAMP) ## regenerate openapi.json from the API function's routes and models
	$(PY) -m devtools.serve --openapi > openapi.json

.PHONY: demo-writes
demo-writes: $(VENV_STAMP) ## a stream of small upserts coalesced through an SQS FIFO queue into the write handler on embedded moto (S3 + SQS), vs the same upserts sent directly; DEMO_WRITES_ARGS="--writes 500"
	$(PY) -m devtools.demo_writes $(DEMO_WRITES_ARGS)
