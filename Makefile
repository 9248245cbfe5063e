# fpnbook: `make lab` opens the book, `make test` tests it. Both bootstrap .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fpnbook-installed
PORT   ?= 8888
# OpenMP threads that spin while waiting starve each other when other work shares
# the cores (seen here: a training step 10x slower); sleeping costs little when idle.
export OMP_WAIT_POLICY ?= PASSIVE
# Jupyter refuses to start as root (containers, CI) unless told it is meant.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
# The command the README gives readers and .ci/run calls.
PYTEST := $(PY) -m pytest tests chapters --nbval --nbval-sanitize-with .nbval-sanitize.cfg

SITE_STAMP := $(VENV)/.fpnbook-site-installed

.PHONY: venv lab test test-browser book site clean-venv

# Re-install only when the project files changed since the last install.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "fpnbook needs Python 3.10 or newer"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,export]"
	@touch $(STAMP)

venv: $(STAMP)

lab: $(STAMP)
	$(PY) -m jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) --notebook-dir=chapters $(ALLOW_ROOT)

test: $(STAMP)
	$(PYTEST)

# The website's tools (the `site` extra), installed once per change of pyproject.toml.
$(SITE_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,site]"
	@touch $(SITE_STAMP)

# The book as a static website in build/site/, from the stored notebooks (no execution).
site: $(SITE_STAMP)
	$(PY) tools/site.py

# The book in a real browser: Debian's Chromium driven by Playwright (tests/browser/README.md),
# JupyterLab and the website (which the suite builds itself).
test-browser: $(SITE_STAMP)
	bash tools/browser_deps.sh $(PY)
	$(PY) -m pytest tests/browser -p no:cacheprovider --timeout=600 -s

# Sync every jupytext pair from its .py and execute the notebook in place.
book: $(STAMP)
	$(PY) tools/book.py $(CHAPTERS)

clean-venv:
	rm -rf $(VENV)
