#!/usr/bin/env bash
# The engine on one GPU (an H100/H200): build, the GPU tests, then the engine benchmark with the cuda memory
# backend. Budget: under 5 minutes (build ~1 min, demo checkpoints ~20 s, the benchmark with 2 repeats).
# Needs: torch with CUDA, transformers, scikit-build-core, pybind11 and pytest installed (offline, --no-deps), the
# CUDA headers (cuda.h) and a driver. Usage: bench/engine/gpu.sh [RESULTS_DIR]  (default: $OUT, else bench/engine)
set -euo pipefail
cd "$(dirname "$0")/../.."
RESULTS="${1:-${OUT:-bench/engine}}"
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
start=$(date +%s)
timeout 240 $PY -m pip install --no-build-isolation --no-deps -e . > "$RESULTS/build-gpu.log" 2>&1 || {
  echo "build failed, see $RESULTS/build-gpu.log"; tail -30 "$RESULTS/build-gpu.log"; exit 1; }
$PY -c "from warmserve.memory import cuda_compiled; assert cuda_compiled(), 'built without the cuda backend (cuda.h not found: set CUDA_HOME)'"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/gpu/test_engine.py 2>&1 | tee "$RESULTS/tests-gpu-engine.txt" \
  || echo "GPU ENGINE TESTS FAILED (see tests-gpu-engine.txt)"
left=$((300 - ($(date +%s) - start)))
timeout $((left > 60 ? left : 60)) $PY -m warmserve bench engine --device cuda --threads 8 --repeats 2 \
  --json "$RESULTS/results-gpu.json" 2>&1 | tee "$RESULTS/results-gpu.txt" || echo "ENGINE BENCHMARK FAILED OR TIMED OUT"
echo "done in $(($(date +%s) - start)) s; results in $RESULTS"
