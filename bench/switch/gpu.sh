#!/usr/bin/env bash
# The switch benchmark on one NVIDIA GPU: bench/gpu.sh (build, tests/gpu, then bench switch on the cuda and host
# backends) without the engine benchmark. Usage: bench/switch/gpu.sh [RESULTS_DIR]
WARMSERVE_GPU_PARTS="${WARMSERVE_GPU_PARTS:-build,tests,switch}" exec "$(dirname "$0")/../gpu.sh" "$@"
