#!/usr/bin/env bash
# GPT Lab developer entry point. Every command sets up what it needs first (idempotent).
#
#   ./dev.sh book    set up .venv and build the book into _build/html   (readers start here)
#   ./dev.sh lab     set up .venv and open JupyterLab on notebooks/
#   ./dev.sh test    set up .venv and run the whole suite: `pytest --nbval`
#                    (unit tests, every notebook re-executed and compared, the book build, the browser test)
#   ./dev.sh setup   only the set-up
#
# Environment: GPTLAB_VENV (default .venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=${GPTLAB_VENV:-.venv}
PYTHON=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_install() {
  # Debian/Ubuntu packages; skipped (with a note) where apt or root is not available.
  command -v apt-get >/dev/null || { echo "note: apt-get not found; install $* yourself" >&2; return 0; }
  if [ ! -f /tmp/.gptlab-apt-updated ]; then as_root apt-get update -qq && touch /tmp/.gptlab-apt-updated || true; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || echo "note: could not install $* (needs root); the tests that need them will be skipped" >&2
}

setup() {
  if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
    echo "error: GPT Lab needs Python 3.10 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; rm -rf "$VENV"; "$PYTHON" -m venv "$VENV"; }
  fi
  local py="$VENV/bin/python" stamp="$VENV/.gptlab-installed"
  local want; want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$py" -m pip install -q --upgrade pip
    # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build on Linux.
    "$py" -c 'import torch' 2>/dev/null || "$py" -m pip install -q -c constraints.txt torch==2.13.0
    "$py" -m pip install -q -c constraints.txt -e ".[book,test]"
    echo "$want" > "$stamp"
  fi
  # Headless Chromium for the browser test; Node's npm for offline MathJax (both optional).
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null || apt_install chromium
  command -v npm >/dev/null || apt_install npm
}

cmd=${1:-help}
case "$cmd" in
  setup) setup ;;
  book)  setup; PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/python" book/_scripts/build_book.py ;;
  lab)   setup; exec "$VENV/bin/jupyter" lab notebooks/ ;;
  test)  setup; shift; PATH="$PWD/$VENV/bin:$PATH" exec "$VENV/bin/pytest" --nbval "$@" ;;
  *)     sed -n '2,12p' "$0"; [ "$cmd" = help ] || exit 2 ;;
esac
