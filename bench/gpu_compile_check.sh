#!/usr/bin/env bash
# CI compile step for the GPU code (issue 13): compiles csrc/kernels/*.cu with nvcc for the architectures the
# extension is built for (sm_80 and sm_90 machine code, plus compute_90 PTX), warnings as errors, and checks that
# the cuda backend (csrc/cuda_backend.cpp, which needs cuda.h only) compiles. Needs no GPU. Where nvcc is absent
# it prints one line saying so and exits 0. Usage: bench/gpu_compile_check.sh   (NVCC=/path/to/nvcc to choose;
# WARMSERVE_CUDA_ARCHS="80 90" to change the list)
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || true)}"
for c in "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" /usr/local/cuda/bin/nvcc; do
  [ -z "$NVCC" ] && [ -x "$c" ] && NVCC="$c"
done
if [ -z "$NVCC" ]; then
  echo "gpu compile check: SKIPPED (nvcc not found on PATH or in \$CUDA_HOME/bin)"
  exit 0
fi
ARCHS="${WARMSERVE_CUDA_ARCHS:-80 90}"
gencode=()
last=""
for a in $ARCHS; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); last=$a; done
gencode+=(-gencode "arch=compute_$last,code=compute_$last")  # PTX of the newest, for later GPUs
# cuda.h for the backend: the toolkit nvcc belongs to (nvcc may be a wrapper script outside the toolkit).
inc="$("$NVCC" --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/.*INCLUDES="\?-I"\?\([^" ]*\).*/\1/p' | head -1)"
[ -f "$inc/cuda.h" ] || inc="${CUDA_HOME:-/usr/local/cuda}/include"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
start=$(date +%s)
for f in csrc/kernels/*.cu; do
  "$NVCC" -std=c++17 -O3 -Werror all-warnings -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-Werror \
    "${gencode[@]}" -c "$f" -o "$out/$(basename "$f").o"
done
"${CXX:-c++}" -std=c++17 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -Werror -DWARMSERVE_WITH_CUDA=1 \
  -I"$inc" csrc/cuda_backend.cpp
"${CXX:-c++}" -std=c++17 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -Werror csrc/kernels/kernels_stub.cpp
echo "gpu compile check: OK ($("$NVCC" --version | tail -1); archs $ARCHS; $(ls csrc/kernels/*.cu | wc -l) .cu" \
  "file(s) and cuda_backend.cpp in $(($(date +%s) - start)) s)"
