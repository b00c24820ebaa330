# The two Quickstart commands. Each creates .venv on first use (idempotent: the
# stamp is only rebuilt when pyproject.toml changes) and then runs its job.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hqtd-installed
PYTHON ?= python3
CORES  ?= 2

.PHONY: demo test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

## demo: run the experiment DAG on the embedded mini benchmark (default grid)
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

## test: run the test suite (pytest exits 5 when it collects nothing, which fails here)
test: $(STAMP)
	$(BIN)/python -m pytest -n $(CORES)
