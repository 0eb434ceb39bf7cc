# The verbs a person types. Every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Python 3.11, 3.12 and 3.13 are supported. `make test PYTHON=python3.12` (python3.13, or a path
# such as $(pyenv root)/versions/3.12.1/bin/python3.12) builds and uses .venv-python3.12; there
# the export extra's torch==2.13.0 is PyPI's CUDA build (about 4 GB with its nvidia wheels), so
# CI runs only the fast tests on 3.12 and 3.13 (.ci/run) and everything on 3.11.
PYTHON ?= python3.11
VENV   ?= $(if $(filter python3.11,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TOOLS  := .tools
export PATH := $(CURDIR)/$(TOOLS)/bin:$(PATH)

.PHONY: help setup tools serve test lint format bench bench-crypto chart-docs chart-check tf-check \
        loadtest loadtest-chart demo soak helm-values clean prometheus monitor drift-demo \
        image image-gpu lock

help: ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml loadtests/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# Two distributions: the server (platform/phiserve) and the load-test library
	# (loadtests/phiserve_load), which loadtests/, benchmarks/ and tests/ import.
	$(BIN)/pip install -q -e '.[export,aws,vault,loadtest,dev]' -e './loadtests[report]'
	touch $@

setup: $(STAMP) ## create the virtual environment (once)

tools: ## install helm 3 and 4, checkov (own venv), check terraform
	bash tools/install-tools.sh

serve: setup ## prepare dev keys and example models, then serve on 127.0.0.1:3000
	$(BIN)/phiserve dev init
	$(BIN)/phiserve serve

test: setup tools prometheus ## run every test
	$(BIN)/pytest

lint: setup ## ruff lint and format check, mypy on platform/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

prometheus: ## install Prometheus 2.42 and promtool (Debian's package) when missing
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; } || \
	  echo "prometheus: not installed (needs root): the monitoring tests will skip"

monitor: prometheus ## Prometheus with the shipped alert rules against a running phiserve (TARGET=127.0.0.1:3000)
	bash tools/monitor.sh

drift-demo: setup ## serve, send a shifted population halfway, chart the PSI crossing its threshold
	$(BIN)/python -m demos.drift

bench: setup ## phiserve vs MLServer vs a bare floor, the cost of each feature, DICOM decode vs inference
	$(BIN)/python -m benchmarks.serving
	$(BIN)/python -m benchmarks.dicom

bench-crypto: setup ## decrypt-and-load vs plaintext load of a 100 MB model
	$(BIN)/python -m benchmarks.crypto

chart-docs: setup ## regenerate the chart README parameters and its copy of the dashboard
	$(BIN)/python helm/scripts/chart_docs.py

chart-check: setup tools ## helm lint, template, kubernetes-validate, checkov on the chart
	$(BIN)/pytest tests/helm

tf-check: setup tools ## terraform fmt/validate and checkov on terraform/
	$(BIN)/pytest tests/terraform

loadtest: setup ## locust against a running server (HOST=http://127.0.0.1:3000)
	bash loadtests/run.sh

loadtest-chart: tools ## copy the load-test code into loadtests/chart and package it into dist/
	bash loadtests/stage-chart.sh
	helm package loadtests/chart --destination dist

demo: setup ## the whole job end to end: models, serve, load test, report
	bash loadtests/demo.sh

soak: setup ## bounded soak: RSS and file descriptors over time
	$(BIN)/python -m benchmarks.soak

helm-values: ## write helm values from terraform outputs (TF_DIR=terraform/environments/example)
	bash terraform/scripts/helm-values.sh

image: setup ## build the CPU container image and its SBOM (podman or docker; BASE_IMAGE=...)
	$(BIN)/python -m tools.image build cpu

image-gpu: setup ## build the GPU image (onnxruntime-gpu, CUDA and cuDNN wheels; ~3 GB)
	$(BIN)/python -m tools.image build gpu

lock: setup ## regenerate images/requirements.lock and images/gpu.lock from pyproject.toml
	$(BIN)/python -m tools.image lock

clean: ## remove local state (keys, models, audit) and reports
	rm -rf .phiserve reports
