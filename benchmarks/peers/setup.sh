#!/usr/bin/env bash
# Create the peer virtual environments for benchmarks/peers/ (one command, idempotent):
#   bash benchmarks/peers/setup.sh [VENV_DIR [NAME...]]   (default dir: $PEER_VENVS or .peer-venvs/;
#                                                           NAMEs: sparsify saelens circuit-tracer)
# torch is installed first, so pip keeps that build instead of resolving its own (a multi-GB
# CUDA wheel). sparsify/SAELens get the torch version saecircuits runs on; circuit-tracer gets
# torch==2.13.0 and nnsight==0.6.3 (circuit-tracer 0.5.0 imports `nnsight.intervention.tracing`,
# which nnsight 0.8 removed; it declares nnsight>=0.6 only) with the transformers 4.57 it brings.
set -euo pipefail
py="${PYTHON:-python3}"
dir="${1:-${PEER_VENVS:-.peer-venvs}}"
shift || true
names=("$@")
[ ${#names[@]} = 0 ] && names=(sparsify saelens circuit-tracer)
declare -A packages=([sparsify]="eai-sparsify==1.3.3" [saelens]="sae-lens==6.54.12"
                     [circuit-tracer]="circuit-tracer==0.5.0 nnsight==0.6.3")
declare -A modules=([sparsify]=sparsify [saelens]=sae_lens [circuit-tracer]=circuit_tracer)
mkdir -p "$dir"
for name in "${names[@]}"; do
  if [ -z "${packages[$name]:-}" ]; then
    echo "unknown peer '$name' (choose from: ${!packages[*]})" >&2; exit 2
  fi
  venv="$dir/$name"
  if "$venv/bin/python" -c "import ${modules[$name]}" 2>/dev/null; then
    echo "$venv: ready"; continue
  fi
  if [ "$name" = circuit-tracer ]; then
    torch_version=2.13.0
  else
    torch_version="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')"
  fi
  start=$SECONDS
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "torch==$torch_version"
  # shellcheck disable=SC2086  # the package list is split on purpose
  "$venv/bin/pip" install -q --disable-pip-version-check ${packages[$name]}
  echo "$venv: installed ${packages[$name]} with torch $torch_version in $((SECONDS - start)) s"
done
