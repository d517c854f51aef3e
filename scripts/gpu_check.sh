#!/usr/bin/env bash
# GPU check (issue 11): train / trace / steer / eval on cuda vs the same run on CPU.
# Needs only torch, transformers, nnsight and this repository. Usage:
#   scripts/gpu_check.sh                 # cuda vs cpu
#   scripts/gpu_check.sh --device cpu    # CPU-only smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python3 scripts/gpu_check.py "$@"
