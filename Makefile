# Two commands, each doing its own (idempotent) set-up from the lock file:
#   make run    the default pipeline (configs/default.yaml) with Snakemake
#   make test   the test suite (slow paper-scale checks are opt-in: make test-slow)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= all
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: run test test-slow setup lock report release

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; assert sys.version_info >= (3, 11), "lopt needs Python >= 3.11"'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$$(grep -E '^uv==' requirements.lock)"
# --compile-bytecode: .pyc files once here, not a source compile in every process (with
# PYTHONDONTWRITEBYTECODE set none is cached; each Snakemake job or CLI call paid ~5 s)
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

run: $(STAMP)
	snakemake --cores $(CORES) --configfile configs/default.yaml

# --dist loadscope: a module's tests share one worker, so a module fixture that runs a pipeline
# or several processes is built once, not once per worker (loadgroup would be finer, but its
# xdist_group marks are ignored under pytest 9.2: pytest-xdist issue #1386); modules start
# longest first (tests/conftest.py, LONGEST_FIRST), which --no-loadscope-reorder keeps
test: $(STAMP)
	pytest -m "not slow" -n 2 --dist loadscope --no-loadscope-reorder --timeout 900

test-slow: $(STAMP)  # the paper studies and the default pipeline end to end, ~17 min on 2 cores
	pytest -m slow

report: $(STAMP)
	snakemake --configfile configs/default.yaml --report results/default/report.html

# Refresh the artifacts the repository ships (README, DVC): re-run the default pipeline,
# record its outputs in dvc.lock and rebuild the in-repo `release` remote from them alone.
# Then commit dvc.lock and dvc-release/ (tests/test_release.py checks they match the code).
RELEASED := data pretrained@default experiment@default
release: $(STAMP)
	snakemake --cores $(CORES) --configfile configs/default.yaml
	dvc commit --force $(RELEASED)
	rm -rf dvc-release
	dvc push --remote release $(RELEASED)

lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock
