# The two commands a newcomer needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test bench reliability clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

run: $(STAMP)
	$(BIN)/wf daemon --config config.toml

test: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy runtime storage orchestrator
	$(BIN)/pytest

bench: $(STAMP)
	.ci/system-deps
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.run

# The long reliability campaign (SPEC §10, docs/reliability.md): every check at campaign size
# (~2 h on 2 cores: the 100 x 500 mixed crash rounds take about an hour, the 50 PostgreSQL
# two-daemon rounds of tests/crash/test_cluster_crashes.py about 25 minutes).
# `make reliability SEED=1234` replays a run.
reliability: $(DEV_STAMP)
	.ci/system-deps
	WF_CAMPAIGN=1 SEED=$(SEED) $(BIN)/pytest -p no:randomly -q -s --timeout=14400 tests/crash tests/reliability

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
