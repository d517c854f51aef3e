#!/usr/bin/env bash
# Create the peer virtual environments for benchmarks/peers/ (one command, idempotent):
#   bash benchmarks/peers/setup.sh [VENV_DIR]       (default: $PEER_VENVS or .peer-venvs/)
# torch is installed first at the version saecircuits uses, so both peers run on the same
# torch build as ours (pip then keeps it instead of pulling a CUDA wheel).
set -euo pipefail
dir="${1:-${PEER_VENVS:-.peer-venvs}}"
torch_version="$(python3 -c 'import torch; print(torch.__version__.split("+")[0])')"
declare -A packages=([sparsify]="eai-sparsify==1.3.3" [saelens]="sae-lens==6.54.12")
mkdir -p "$dir"
for name in sparsify saelens; do
  venv="$dir/$name"
  if "$venv/bin/python" -c "import ${name/saelens/sae_lens}" 2>/dev/null; then
    echo "$venv: ready"; continue
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "torch==$torch_version"
  "$venv/bin/pip" install -q "${packages[$name]}"
  echo "$venv: installed ${packages[$name]} with torch $torch_version"
done
