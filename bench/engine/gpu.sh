#!/usr/bin/env bash
# The engine on one NVIDIA GPU: bench/gpu.sh (build, tests/gpu, then bench engine --device cuda) without the
# switch benchmark. Usage: bench/engine/gpu.sh [RESULTS_DIR]
WARMSERVE_GPU_PARTS="${WARMSERVE_GPU_PARTS:-build,tests,engine}" exec "$(dirname "$0")/../gpu.sh" "$@"
