#!/usr/bin/env bash
# The switch benchmark and the cuda tests of the memory core on one NVIDIA GPU (an H100: under 5 minutes).
# Usage: bench/switch/gpu.sh [RESULTS_DIR]   (default: $OUT, else bench/switch/gpu-results)
# Needs: a CUDA build of torch, scikit-build-core, pybind11 and pytest already installed (it builds without
# network), the CUDA toolkit headers (cuda.h) for the build, and a driver.
set -euo pipefail
cd "$(dirname "$0")/../.."
RESULTS="${1:-${OUT:-bench/switch/gpu-results}}"
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
start=$(date +%s)
{ nvidia-smi || true; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$RESULTS/machine.txt" 2>&1

# 1. Build (the cuda backend is compiled when cuda.h is found; CUDA_HOME helps find it).
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
python3 -m pip install --no-build-isolation -e . > "$RESULTS/build.log" 2>&1 || {
  echo "build failed, see $RESULTS/build.log"; tail -30 "$RESULTS/build.log"; exit 1; }
python3 -c "from warmserve.memory import cuda_compiled; assert cuda_compiled(), 'built without the cuda backend'"

# 2. The cuda tests, then the host unit tests (they need hypothesis; a failure there does not stop the run).
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_memory.py 2>&1 | tee "$RESULTS/tests-gpu.txt" \
  || echo "GPU TESTS FAILED (see tests-gpu.txt)"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/unit/memory 2>&1 | tee "$RESULTS/tests-unit-memory.txt" || true

# 3. The benchmark on the GPU (1, 4 and 10 GiB of weights: the paper's goal is < 20 ms per 10 GB), then the
#    host backend on the same machine for comparison.
timeout 240 python3 -m warmserve bench switch --backend cuda --sizes-gib 1,4,10 --repeats 5 \
  --json "$RESULTS/switch-cuda.json" --plot "$RESULTS/switch-cuda.png" 2>&1 | tee "$RESULTS/switch-cuda.txt"
left=$((300 - ($(date +%s) - start)))
if [ "$left" -gt 60 ]; then
  timeout $((left - 10)) python3 -m warmserve bench switch --backend host --sizes-gib 0.25,1 --repeats 3 \
    --json "$RESULTS/switch-host.json" 2>&1 | tee "$RESULTS/switch-host.txt" || true
fi
echo "done in $(($(date +%s) - start)) s; results in $RESULTS"
