# trainlib: every target sets itself up (virtual environment + pinned packages) first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= experiments/mnist1d_cnn.toml
PORT ?= 5000
HOST ?= 127.0.0.1
WORKERS ?= 0 1 2 4
SWEEP_ARGS ?=

.PHONY: setup sweep test lint format bench bench-quick bench-compare ui server clean

setup: $(STAMP)

# Pinned versions come from requirements.lock; torch==2.13.0 there is the CPU build.
# A CUDA user installs their CUDA build of torch first (see README), then runs make setup.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

sweep: setup
	$(BIN)/trainlib sweep $(CONFIG) $(SWEEP_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: setup lint
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
