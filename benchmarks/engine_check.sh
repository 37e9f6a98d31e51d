#!/usr/bin/env bash
# The real-engine check from a bare GPU machine: a fresh virtual environment with vLLM (which brings its own torch
# and transformers) and this project, then benchmarks/engine_check.py. Usage, from the repository root:
#   bash benchmarks/engine_check.sh [OUT_DIR] [extra engine_check.py arguments]
# WHEELHOUSE=DIR installs from a local folder of wheels instead of PyPI (for machines without network).
# Designed to finish within 8 minutes: install about 3, six engine loads of the miniature about 4.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-engine-check}"
shift || true
venv="${ENGINE_CHECK_VENV:-.engine-check-venv}"
python3 -m venv "$venv"
. "$venv/bin/activate"
source_args=()
[ -n "${WHEELHOUSE:-}" ] && source_args=(--no-index --find-links "$WHEELHOUSE")
python -m pip install -q "${source_args[@]}" vllm compressed-tensors
python -m pip install -q "${source_args[@]}" -e .  # keeps the torch vLLM installed (the project accepts torch>=2.4)
timeout 480 python benchmarks/engine_check.py --out "$out" "$@"
