# viewforge: `make demo` runs the main job on the sample images, `make test` runs the tests.
# Each target installs what it needs (.venv for the project, .venv-dvc for DVC: see DESIGN.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DVC_VENV := .venv-dvc
DVC := $(DVC_VENV)/bin/dvc

.PHONY: demo test ui dvc install bench release

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[dev,distributed]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m assets_defs.demo

test: $(STAMP) $(DVC)
	PATH="$(CURDIR)/$(DVC_VENV)/bin:$$PATH" $(PY) -m pytest -q

ui: $(STAMP)
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/.dagster_home}; mkdir -p $$DAGSTER_HOME; \
	DAGSTER_HOME=$$DAGSTER_HOME $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1

# DVC in its own environment (its antlr4 pin breaks Dagster's asset selection parser)
$(DVC):
	@test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	@$(DVC_VENV)/bin/python -m pip install -q --disable-pip-version-check uv
	$(DVC_VENV)/bin/uv pip install -q --python $(DVC_VENV)/bin/python 'dvc>=3.50,<4'

dvc: $(DVC)

# Dataset release (pipelines/release.py): dvc repro, commit dvc.lock, dvc push, git tag + push.
# make release TAG=v1 REMOTE=/shared/dvc-store   (or s3://bucket/path; absolute URLs only)
release: $(STAMP) $(DVC)
	PATH="$(abspath $(DVC_VENV))/bin:$$PATH" $(PY) -m pipelines.release --tag "$(TAG)" $(if $(REMOTE),--remote "$(REMOTE)")

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done
