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

# tests/test_ui_browser.py drives Debian's chromium (Playwright's own browser download is not used)
test: $(STAMP) $(DVC)
	@test -x /usr/bin/chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
	  || echo "chromium not installed (needs root): tests/test_ui_browser.py will be skipped"
	PATH="$(CURDIR)/$(DVC_VENV)/bin:$$PATH" $(PY) -m pytest -q

# Dagster UI on 127.0.0.1:$(PORT). Without model weights: VIEWFORGE_PROFILE=demo make ui (tiny random
# models, labelled). Creates $DAGSTER_HOME/dagster.yaml from assets_defs/dagster.yaml when missing
# (gpu pool limit GPU_POOL_LIMIT). Dagster runs in its own session; Ctrl-C interrupts it and, after 10 s,
# kills whatever is left of it (webserver, daemon, code servers, run workers): nothing lingers.
GPU_POOL_LIMIT ?= 1
PORT ?= 3000
ui: $(STAMP)
	@export DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/.dagster_home}; mkdir -p "$$DAGSTER_HOME"; \
	test -f "$$DAGSTER_HOME/dagster.yaml" || \
	  sed 's/@GPU_POOL_LIMIT@/$(GPU_POOL_LIMIT)/' assets_defs/dagster.yaml > "$$DAGSTER_HOME/dagster.yaml"; \
	echo "DAGSTER_HOME=$$DAGSTER_HOME (gpu pool limit: $$DAGSTER_HOME/dagster.yaml); profile: $${VIEWFORGE_PROFILE:-params.yaml}"; \
	setsid $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(PORT) & pid=$$!; \
	stop() { kill -INT -- -$$pid 2>/dev/null; for i in $$(seq 40); do kill -0 -- -$$pid 2>/dev/null || exit 0; \
	  sleep 0.25; done; echo "make ui: forcing the Dagster processes down"; kill -KILL -- -$$pid 2>/dev/null; exit 0; }; \
	trap stop INT TERM; wait $$pid

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
