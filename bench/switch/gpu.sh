#!/usr/bin/env bash
# The switch benchmark and the cuda tests of the memory core on one NVIDIA GPU (an H100/H200: under 5 minutes).
# Usage: bench/switch/gpu.sh [RESULTS_DIR]   (default: $OUT, else bench/switch/gpu-results)
# Needs: torch with CUDA, scikit-build-core, pybind11 and pytest installed (the build runs offline, with
# --no-deps: a missing runtime dependency is reported, not downloaded), the CUDA headers (cuda.h) and a driver.
set -euo pipefail
cd "$(dirname "$0")/../.."
RESULTS="${1:-${OUT:-bench/switch/gpu-results}}"
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
start=$(date +%s)
{ nvidia-smi || true; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$RESULTS/machine.txt" 2>&1

# 1. Build (the cuda backend is compiled when cuda.h is found; CUDA_HOME helps find it). ~1 min.
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
timeout 240 $PY -m pip install --no-build-isolation --no-deps -e . > "$RESULTS/build.log" 2>&1 || {
  echo "build failed, see $RESULTS/build.log"; tail -30 "$RESULTS/build.log"; exit 1; }
$PY -c "from warmserve.memory import cuda_compiled; assert cuda_compiled(), 'built without the cuda backend (cuda.h not found: set CUDA_HOME)'"
$PY - <<'PY' || echo "WARNING: missing runtime dependencies (install them, offline wheels if needed)"
import importlib, sys
missing = [m for m in ("numpy", "msgspec", "zmq", "matplotlib", "safetensors") if importlib.util.find_spec(m) is None]
print("missing:", missing) if missing else None
sys.exit(1 if missing else 0)
PY

# 2. The cuda tests, then the host unit tests (a failure there does not stop the run).
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/gpu/test_memory.py 2>&1 | tee "$RESULTS/tests-gpu.txt" \
  || echo "GPU TESTS FAILED (see tests-gpu.txt)"
timeout 60 $PY -m pytest -q -p no:cacheprovider tests/unit/memory 2>&1 | tee "$RESULTS/tests-unit-memory.txt" || true

# 3. The benchmark on the GPU (1, 4 and 10 GiB of weights: the paper's goal is < 20 ms per 10 GB), then the
#    host backend on the same machine for comparison, in whatever time is left of the 5 minutes.
timeout 150 $PY -m warmserve bench switch --backend cuda --sizes-gib 1,4,10 --repeats 5 \
  --json "$RESULTS/switch-cuda.json" --plot "$RESULTS/switch-cuda.png" 2>&1 | tee "$RESULTS/switch-cuda.txt" \
  || echo "CUDA BENCHMARK FAILED OR TIMED OUT"
left=$((300 - ($(date +%s) - start)))
if [ "$left" -gt 60 ]; then
  timeout $((left - 10)) $PY -m warmserve bench switch --backend host --sizes-gib 0.25,1 --repeats 3 \
    --json "$RESULTS/switch-host.json" 2>&1 | tee "$RESULTS/switch-host.txt" || true
fi
echo "done in $(($(date +%s) - start)) s; results in $RESULTS"
