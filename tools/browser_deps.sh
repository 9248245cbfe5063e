#!/usr/bin/env bash
# Installs what the browser tests (tests/browser, `make test-browser`) need, when missing:
#   - Debian's Chromium at /usr/bin/chromium (apt-get; as root, or through sudo), and
#   - the `playwright` Python package in the project's virtual environment.
# Playwright drives that system Chromium; it never downloads a browser of its own, so
# `playwright install` is deliberately never run.
# Usage: tools/browser_deps.sh [PYTHON]   (PYTHON defaults to .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
CHROMIUM=/usr/bin/chromium
PLAYWRIGHT_SPEC='playwright>=1.45,<2'

if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "browser_deps: $CHROMIUM is missing and installing it needs root." >&2
    echo "  Run as root: apt-get update && apt-get install -y chromium" >&2
    exit 1
  fi
  echo "browser_deps: installing Debian's chromium"
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
"$CHROMIUM" --version 2>/dev/null | grep -q . || { echo "browser_deps: $CHROMIUM does not run" >&2; exit 1; }

if ! "$PY" -c 'import playwright.sync_api' 2>/dev/null; then
  echo "browser_deps: installing $PLAYWRIGHT_SPEC into $PY's environment"
  "$PY" -m pip install --quiet "$PLAYWRIGHT_SPEC"
fi
echo "browser_deps: $("$CHROMIUM" --version 2>/dev/null), playwright $("$PY" -c 'from importlib.metadata import version; print(version("playwright"))')"
