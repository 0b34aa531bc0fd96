#!/usr/bin/env bash
# The engine on one NVIDIA GPU: bench/gpu.sh (build, tests/gpu, the decode-step CUDA graphs bench, then bench engine
# --device cuda) without the switch benchmark. Usage: bench/engine/gpu.sh [RESULTS_DIR]
WARMSERVE_GPU_PARTS="${WARMSERVE_GPU_PARTS:-build,tests,graphs,engine}" exec "$(dirname "$0")/../gpu.sh" "$@"
