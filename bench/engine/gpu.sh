#!/usr/bin/env bash
# The engine on one GPU (an H100): the GPU tests, then the engine benchmark with the cuda memory backend.
# Budget: under 5 minutes (demo checkpoints are written first, ~10 s; the benchmark uses 2 repeats).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/engine}
python -m pytest -q -p no:cacheprovider tests/gpu/test_engine.py
python -m warmserve bench engine --device cuda --threads 8 --repeats 2 --json "$OUT/results-gpu.json"
