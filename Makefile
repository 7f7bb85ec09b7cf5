# kuosan: `make demo` trains and samples on the bundled digits; `make test` runs the test suite.
# Both create the virtual environment .venv on first use. TORCH pins a CPU build of PyTorch that
# installs from the local wheel store; override it elsewhere (e.g. TORCH='torch>=2.4').
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
DEMO_BUDGET ?= 300
DEMO_OUT ?= runs/demo
BIN := $(VENV)/bin

.PHONY: install install-test browser demo test test-slow lint format clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.lint: $(VENV)/.core
	$(BIN)/python -m pip install -q -e ".[lint]"
	touch $@

install: $(VENV)/.core
install-test: $(VENV)/.test

# Trains the digits preset for DEMO_BUDGET seconds (replacing an earlier demo run), then writes
# $(DEMO_OUT)/samples.png (a grid), training.png (the loss curves), trajectory.png (x_t and x0_hat of
# 16 samples over the steps) and samples.npy (1000 samples in [-1, 1]), and ends by printing every
# digit metric of those samples (kept in $(DEMO_OUT)/metrics.json).
demo: $(VENV)/.core
	rm -rf $(DEMO_OUT)
	$(BIN)/kuosan train --preset digits --time-budget $(DEMO_BUDGET) --seed 0 --out $(DEMO_OUT)
	$(BIN)/kuosan sample $(DEMO_OUT) -n 100 --seed 0 --out $(DEMO_OUT)/samples.png
	$(BIN)/kuosan plot $(DEMO_OUT)
	$(BIN)/kuosan sample $(DEMO_OUT) -n 16 --seed 0 --out $(DEMO_OUT)/samples16.png --trajectory $(DEMO_OUT)/trajectory.png
	$(BIN)/kuosan sample $(DEMO_OUT) -n 1000 --seed 1 --out $(DEMO_OUT)/samples.npy
	$(BIN)/kuosan eval $(DEMO_OUT)/samples.npy --dataset digits --out $(DEMO_OUT)/metrics.json

# Debian's Chromium and ChromeDriver for the browser test of the web app (tests/test_web.py, which
# skips it, saying so, where they are absent); installing them needs root or sudo. A failed install
# (no package source reachable) is reported and the test is skipped, not the build failed.
BROWSER_SKIPPED = echo "browser: could not install chromium and chromium-driver; the browser test will be skipped"
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "browser: chromium and chromedriver are installed"; \
	elif [ "$$(id -u)" = 0 ]; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
			|| $(BROWSER_SKIPPED); \
	elif command -v sudo >/dev/null; then \
		{ sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
			|| $(BROWSER_SKIPPED); \
	else \
		echo "browser: installing chromium and chromium-driver needs root; the browser test will be skipped"; \
	fi

# The default suite leaves out the tests marked slow (multi-process training, compiled graphs, the
# installed wheel); `make test-slow` runs those, and CI runs both.
test: $(VENV)/.test
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(VENV)/.test
	$(BIN)/python -m pytest -q -m slow

# ruff, pinned in the lint extra: the lint rules and the formatting of pyproject.toml's [tool.ruff]
lint: $(VENV)/.lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.lint
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs build src/*.egg-info
