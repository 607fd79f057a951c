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
# make server: empty means trainlib's defaults (the sqlite store under mlruns/ and mlruns/artifacts).
BACKEND_STORE_URI ?=
ARTIFACTS_DESTINATION ?=
SERVER_ARGS ?=

.PHONY: setup system-deps sweep test lint format bench bench-quick bench-compare bench-device device-wheels ui server clean

setup: $(STAMP)

# Pinned versions come from requirements.lock; torch==2.13.0 there is the CPU build.
# A CUDA user installs their CUDA build of torch first (see README), then runs make setup.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# System packages the end-to-end tests use: a real PostgreSQL and a real headless Chromium.
# Installed only where missing (make test runs as root in CI; apt-get is allowed there).
system-deps:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)
	@test -x /usr/bin/chromium || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

sweep: setup
	$(BIN)/trainlib sweep $(CONFIG) $(SWEEP_ARGS)

# MLflow tracking server (proxied artifacts) for sweeps on several machines; see docs/scale-out.md.
# Not echoed by make: BACKEND_STORE_URI may hold a password (trainlib server prints it redacted).
server: setup
	@$(BIN)/trainlib server --host '$(HOST)' --port '$(PORT)' \
		$(if $(BACKEND_STORE_URI),--backend-store-uri '$(BACKEND_STORE_URI)') \
		$(if $(ARTIFACTS_DESTINATION),--artifacts-destination '$(ARTIFACTS_DESTINATION)') $(SERVER_ARGS)

# The MLflow UI on the store make sweep writes; prints the latest study's address (docs/ui.md).
# PORT=5001 for another port, HOST=0.0.0.0 to listen on every interface (default: this machine only).
ui: setup
	$(BIN)/trainlib ui --host '$(HOST)' --port '$(PORT)'

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: setup system-deps lint
	$(BIN)/python -m pytest tests

# ---- benchmarks: bench/ holds plain pytest-benchmark tests; trainlib bench-report turns their JSON into reports ----
# make bench WORKERS="0 2 4 8"; make bench-quick QUICK_OUT=/tmp/q; make bench-compare BASELINE=bench/results/X.json
BENCH_ARGS ?=
BENCH_REPORTS ?= bench/reports
QUICK_OUT ?= .cache/bench-quick
QUICK_REPORT_ARGS ?= --no-tracking
# bench-compare's baseline: with BENCH_ARGS=--quick the last make bench-quick, else the newest bench/results/*.json.
BASELINE ?= $(if $(findstring --quick,$(BENCH_ARGS)),$(QUICK_OUT)/bench.json,$(lastword $(sort $(wildcard bench/results/*.json))))
MIN_EFFECT ?= 0.05
CASE_MIN_EFFECT ?= 0.15
COMPARE_OUT ?= .cache/bench-compare
# --workers only where WORKERS was given: a --quick run keeps its own worker counts.
WORKER_ARGS = $(if $(filter command line environment,$(origin WORKERS)),--workers "$(WORKERS)")
# make bench CONFIG=path/study.toml: that study's model and data (CONFIG given on the command line or in the
# environment; the default CONFIG above is for make sweep and leaves the default grid as it is).
BENCH_STUDY := $(if $(filter file,$(origin CONFIG)),,--config '$(CONFIG)')
# e.g. examples/digits_cnn/study.toml -> bench/results/digits_cnn-study/
BENCH_STUDY_DIR := bench/results/$(notdir $(patsubst %/,%,$(dir $(abspath $(CONFIG)))))-$(basename $(notdir $(CONFIG)))

# The default grid (3 to 5 minutes on a 2-core CPU): JSON in .benchmarks/ (autosave) and bench/results/, reports.
# With CONFIG=study.toml: that study's grid, its JSON and reports under bench/results/<folder>-<file name>/.
bench: setup
	out=$(if $(BENCH_STUDY),$(BENCH_STUDY_DIR),bench/results) && mkdir -p $$out && \
	json=$$out/$$(date -u +%Y%m%dT%H%M%SZ).json && \
	$(BIN)/python -m pytest bench --workers "$(WORKERS)" --benchmark-autosave --benchmark-json=$$json \
		$(BENCH_STUDY) $(BENCH_ARGS) && \
	$(BIN)/trainlib bench-report $$json --out-dir $(if $(BENCH_STUDY),$$out,$(BENCH_REPORTS))

# The reduced grid (workers 0 and 2 and auto, each speed knob once, the guard in fp32 eager and compiled, small
# datasets, 6 to 12 interleaved rounds a case): a few minutes on a 2-core CPU once torch.compile's cache is warm;
# JSON and reports in QUICK_OUT.
bench-quick: setup
	mkdir -p $(QUICK_OUT)
	$(BIN)/python -m pytest bench --quick --benchmark-json=$(QUICK_OUT)/bench.json $(BENCH_STUDY) $(BENCH_ARGS)
	$(BIN)/trainlib bench-report $(QUICK_OUT)/bench.json --out-dir $(QUICK_OUT) $(QUICK_REPORT_ARGS)

# Rerun the grid into COMPARE_OUT/candidate.json and test it against BASELINE (trainlib bench-compare: a rank test
# per case and over the suite; slowdowns under CASE_MIN_EFFECT for one case, MIN_EFFECT for the suite's geometric
# mean, ignored): a table, exit 1 on a regression, else 0.
bench-compare: setup
	@test -f "$(BASELINE)" || { echo "bench-compare: baseline '$(BASELINE)' not found; run make bench (or make bench-quick with BENCH_ARGS=--quick) first, or pass BASELINE=" >&2; exit 2; }
	mkdir -p $(COMPARE_OUT)
	$(BIN)/python -m pytest bench -q $(WORKER_ARGS) --benchmark-json=$(COMPARE_OUT)/candidate.json $(BENCH_STUDY) $(BENCH_ARGS)
	$(BIN)/trainlib bench-compare '$(BASELINE)' $(COMPARE_OUT)/candidate.json --min-effect $(MIN_EFFECT) --case-min-effect $(CASE_MIN_EFFECT)

# On a GPU machine with torch, numpy, pytest and pytest-benchmark (no virtual environment, no MLflow or Optuna):
# the CUDA grid (speed knobs, accuracy guard, workers and memory) in at most 8 minutes, one JSON under
# bench/results/. Missing packages come from .whl/ (make device-wheels, run where pip reaches the internet).
# Then, anywhere: .venv/bin/trainlib bench-report bench/results/device-<time>.json --out-dir bench/reports/device
DEVICE_PYTHON ?= python3
bench-device:
	$(DEVICE_PYTHON) tools/bench_device.py $(if $(BENCH_ARGS),-- $(BENCH_ARGS))

# Wheels a bare GPU machine lacks (mnist1d), for Python DEVICE_PYTHON_VERSION, into .whl/ (git-ignored).
DEVICE_PYTHON_VERSION ?= 3.12
device-wheels: setup
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version $(DEVICE_PYTHON_VERSION) \
		--implementation cp --platform manylinux2014_x86_64 -d .whl \
		mnist1d==$$($(BIN)/python -c "import importlib.metadata as m; print(m.version('mnist1d'))")

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
