#!/usr/bin/env bash
# GPT Lab developer entry point. Every command sets up what it needs first (idempotent).
#
#   ./dev.sh book [ARGS]   set up .venv and build the book into _build/html   (readers start here)
#   ./dev.sh lab [ARGS]    set up .venv and open JupyterLab on notebooks/ (ARGS go to jupyter lab)
#   ./dev.sh test [ARGS]   set up .venv and run the whole suite: `pytest --nbval ARGS`
#                          (unit tests, every notebook re-executed and compared, the book build, the browser test)
#   ./dev.sh setup         only the set-up
#   ./dev.sh torch         only PyTorch (the CPU build where no NVIDIA GPU is found)
#
# Environment: GPTLAB_VENV (default .venv), PYTHON (default python3),
# GPTLAB_DEV_DRY_RUN=1 (print the book/lab/test command instead of running it; no set-up).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=${GPTLAB_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_install() {
  # Debian/Ubuntu packages; skipped (with a note) where apt or root is not available.
  command -v apt-get >/dev/null || { echo "note: apt-get not found; install $* yourself" >&2; return 0; }
  if [ ! -f /tmp/.gptlab-apt-updated ]; then as_root apt-get update -qq && touch /tmp/.gptlab-apt-updated || true; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || echo "note: could not install $* (needs root); the tests that need them will be skipped" >&2
}

ensure_venv() {
  if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
    echo "error: GPT Lab needs Python 3.10 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; rm -rf "$VENV"; "$PYTHON" -m venv "$VENV"; }
  fi
}

has_nvidia_gpu() { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }

install_torch() {
  # Pinned, and first: PyPI's Linux torch is the CUDA build plus ~18 nvidia-* packages (several
  # GB). Without an NVIDIA GPU, PyTorch's CPU-only index serves a ~200 MB wheel instead; a short
  # timeout lets a machine that cannot reach that index fall back to the default one in seconds.
  local py="$VENV/bin/python"
  "$py" -c 'import torch' 2>/dev/null && return 0
  if [ "$(uname -s)" = Linux ] && ! has_nvidia_gpu; then
    if "$py" -m pip install -q -c constraints.txt --timeout 5 --retries 0 \
      --index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple "torch==$TORCH_VERSION"; then
      return 0
    fi
    echo "note: PyTorch's CPU index ($TORCH_CPU_INDEX) was not reachable; installing torch from the default index" >&2
  fi
  "$py" -m pip install -q -c constraints.txt "torch==$TORCH_VERSION"
}

setup() {
  ensure_venv
  local py="$VENV/bin/python" stamp="$VENV/.gptlab-installed"
  local want; want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$py" -m pip install -q --upgrade pip
    install_torch
    "$py" -m pip install -q -c constraints.txt -e ".[book,test]"
    echo "$want" > "$stamp"
  fi
  # Headless Chromium for the browser test; Node's npm for offline MathJax (both optional).
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null || apt_install chromium
  command -v npm >/dev/null || apt_install npm
}

launch() {
  # Replace this shell with the command, or only print it under GPTLAB_DEV_DRY_RUN.
  if [ -n "${GPTLAB_DEV_DRY_RUN:-}" ]; then printf '%s\n' "$*"; exit 0; fi
  setup
  local bin; bin=$(cd "$VENV/bin" && pwd)  # absolute, whether GPTLAB_VENV is relative or not
  exec env PATH="$bin:$PATH" "$@"
}

cmd=${1:-help}
if [ $# -gt 0 ]; then shift; fi
case "$cmd" in
  setup) setup ;;
  torch) ensure_venv; install_torch ;;
  book)  launch "$VENV/bin/python" book/_scripts/build_book.py "$@" ;;
  lab)
    # Jupyter refuses to start as root unless told that this is intended (containers, Colab-like VMs).
    root_flag=""; if [ "$(id -u)" = 0 ]; then root_flag=--allow-root; fi
    launch "$VENV/bin/jupyter" lab notebooks/ ${root_flag:+"$root_flag"} "$@" ;;
  test)  launch "$VENV/bin/pytest" --nbval "$@" ;;
  *)     sed -n '2,/^[^#]/{/^#/p;}' "$0"; [ "$cmd" = help ] || exit 2 ;;
esac
