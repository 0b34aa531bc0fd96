#!/usr/bin/env bash
# Everything GPU-side of warmserve on one NVIDIA GPU (budget: under 8 minutes on one H100): build the package (the
# cuda backend and the CUDA kernels; if that fails, the nvcc compile check file by file and a build without the
# kernels, so the rest still runs), tests/gpu (kernel numerics against the torch path,
# graph replay, the cuda memory core, the engine against transformers), then the switch and engine benchmarks.
# Writes machine.txt, build.log, tests-gpu.txt (+ .xml), tests-gpu-{prefill_kernel,layer_kernels,gemv}.txt (+ .xml:
# the tiled prefill kernel, the fused layer kernels and gemv, each in a process of its own), kernels.{json,txt,png}
# (bench/gpu_kernels.py),
# switch-cuda.{json,txt,png}, switch-cache-cuda.{json,txt} (host checkpoint cache vs pinned host-to-device
# bandwidth), demo.txt and model-load-cuda-{1b,7b}.{json,txt} (the GPU-sized demos: load_model from files vs
# through the host checkpoint cache), graphs-cuda.{json,txt} (bench/gpu_graphs.py: CUDA graphs of the decode step,
# capture time and memory at prewarm, decode with graphs vs eager at batch 1 and 16, TTFT of a prewarm hit;
# graphs-cuda-7b.* on the 7b),
# engine-cuda.{json,txt,png}, tp-cuda.{json,txt} (with 2+ GPUs: a tp-2 start, NCCL group prewarmed vs on demand),
# switch-host.{json,txt} when time is left, and summary.txt into the results folder.
# The GPU-sized demo checkpoints (1b, and 7b when time allows; 2 GB and 14 GB of disk) go to $WARMSERVE_DEMO_DIR
# (default $TMPDIR/warmserve-gpu-demo, outside the results folder).
#
# Usage: bench/gpu.sh [RESULTS_DIR]   (default: bench/gpu-results). When $OUT is set (a device machine whose $OUT
#   comes back, 8 files at most), the results folder is also packed into $OUT/gpu-results.tgz beside a copy of
#   summary.txt, at exit or when stopped: keep RESULTS_DIR outside $OUT (e.g. /tmp/res), so that those two are all
#   that $OUT holds. Every part runs under a limit cut to what is left of the budget (WARMSERVE_GPU_BUDGET_S, less
#   RESERVE_S for packing), so an outer `timeout` a little above the budget never has to fire; if it does, the
#   part under way is stopped and the results are packed. A part that fails does not stop the others.
#   SKBUILD_CMAKE_ARGS=-DWARMSERVE_CUDA_ARCHS=90 and WARMSERVE_CUDA_ARCHS=90: build for the one GPU at hand (an
#                                                   H100/H200: one architecture compiled instead of two)
#   WARMSERVE_GPU_PARTS=build,tests,switch,demo,graphs,engine,tp   the parts to run (bench/switch/gpu.sh and
#                                                   bench/engine/gpu.sh run a subset)
#   WARMSERVE_DEMO_SIZES="1b 7b"                    the GPU-sized demos to write (the 7b only with 4 minutes left)
# Offline: installs nothing from the network. What is missing is installed from wheels placed in bench/wheels/
# (git-ignored: e.g. `pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64
# msgspec pyzmq -d bench/wheels` on a machine with network, for the GPU machine's Python), and the script
# says what it found missing and what is still missing after that.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-bench/gpu-results}"
PARTS=",${WARMSERVE_GPU_PARTS:-build,tests,switch,demo,graphs,engine,tp},"
DEMO_DIR=${WARMSERVE_DEMO_DIR:-${TMPDIR:-/tmp}/warmserve-gpu-demo}  # never under RESULTS: that folder is copied back
BUDGET_S=${WARMSERVE_GPU_BUDGET_S:-470}
WHEELS=bench/wheels
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1 MPLBACKEND=Agg
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # checkpoints are local folders; never reach out
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
command -v nvcc > /dev/null || export PATH="$CUDA_HOME/bin:$PATH"
start=$(date +%s)
RESERVE_S=15  # kept back from every part's limit for packing the results
left() { echo $((BUDGET_S - ($(date +%s) - start))); }
CHILD=
# run LIMIT CMD...: CMD under `timeout -k 10`, for LIMIT seconds or what is left of the budget (less RESERVE_S),
# whichever is smaller; skipped (status 124) with under 5 s. It runs in the background and is waited for: bash runs
# a trap only between commands, and `wait` is interrupted by a trapped signal where a foreground command is not.
run() {
  local lim=$(( $(left) - RESERVE_S )) rc
  [ "$1" -lt "$lim" ] && lim=$1
  shift
  if [ "$lim" -lt 5 ]; then echo "skipped: the time budget is spent"; return 124; fi
  timeout -k 10 "$lim" "$@" &
  CHILD=$!
  wait "$CHILD"
  rc=$?
  CHILD=
  return $rc
}
# Stopped from outside: stop the part under way (timeout passes the signal on to it), then exit; pack runs at exit.
stopped() {
  [ -n "$CHILD" ] && kill -TERM "$CHILD" 2> /dev/null && wait "$CHILD" 2> /dev/null
  exit 143
}
want() { [[ "$PARTS" == *",$1,"* ]]; }
summary() { echo "$*" | tee -a "$RESULTS/summary.txt"; }
: > "$RESULTS/summary.txt"
pack() {
  [ -n "${OUT:-}" ] && [ -d "$OUT" ] || return 0
  tar czf "$OUT/gpu-results.tgz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")" && cp "$RESULTS/summary.txt" "$OUT/"
}
trap pack EXIT
trap stopped TERM INT
machine=$($PY - <<'PY' 2>&1
import platform
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible to torch"
print(f"{gpu}; torch {torch.__version__} (cuda {torch.version.cuda}); python {platform.python_version()}; "
      f"{platform.platform()}")
PY
)
{ echo "$machine"; nvidia-smi || echo "nvidia-smi: not found"; command -v nvcc && nvcc --version | tail -1; } \
  > "$RESULTS/machine.txt" 2>&1
summary "machine: $machine"

# 0. Python packages: import name -> pip name. Build needs scikit-build-core and pybind11 (no build isolation:
#    that would go to the network); the tests and benchmarks need the rest.
missing() {
  $PY - "$@" <<'PY'
import importlib.util, sys
need = {"scikit_build_core": "scikit-build-core", "pybind11": "pybind11", "numpy": "numpy", "msgspec": "msgspec",
        "zmq": "pyzmq", "statsmodels": "statsmodels", "safetensors": "safetensors", "tokenizers": "tokenizers",
        "aiohttp": "aiohttp", "yaml": "pyyaml", "matplotlib": "matplotlib", "tqdm": "tqdm", "pytest": "pytest",
        "hypothesis": "hypothesis", "transformers": "transformers", "torch": "torch", "setproctitle": "setproctitle",
        "tzdata": "tzdata", "prometheus_client": "prometheus-client", "jinja2": "jinja2"}
print(" ".join(p for m, p in need.items() if importlib.util.find_spec(m) is None))
PY
}
miss=$(missing)
if [ -n "$miss" ]; then
  summary "missing python packages: $miss"
  if ls "$WHEELS"/*.whl > /dev/null 2>&1; then
    for pkg in $miss; do  # one at a time: a package with no wheel there must not keep the others out
      $PY -m pip install -q --no-index --find-links "$WHEELS" "$pkg" >> "$RESULTS/wheels.log" 2>&1 \
        || summary "installing $pkg from $WHEELS failed (see wheels.log)"
    done
    miss=$(missing)
    summary "still missing after $WHEELS: ${miss:-nothing}"
  else
    summary "no wheels in $WHEELS/: put wheels for the packages above there (pip download ... -d $WHEELS)"
  fi
else
  summary "python packages: all present"
fi

# 1. Build: the cuda backend when cuda.h is found, the kernels when nvcc is (CUDACXX or PATH).
if want build; then
  t0=$(date +%s)
  if run 240 $PY -m pip install --no-build-isolation --no-deps -e . > "$RESULTS/build.log" 2>&1; then
    summary "build: OK in $(($(date +%s) - t0)) s"
  else
    summary "BUILD FAILED after $(($(date +%s) - t0)) s (see build.log):"
    tail -30 "$RESULTS/build.log" | tee -a "$RESULTS/summary.txt"
    # which kernel source fails, file by file (the build stops at the first), then the package without the kernels:
    # the cuda backend, the switch and engine benchmarks and the eager path still run
    run 120 bench/gpu_compile_check.sh > "$RESULTS/compile-check.txt" 2>&1  # not in a pipeline: run's trap
    tee -a "$RESULTS/summary.txt" < "$RESULTS/compile-check.txt"             # needs it in this shell
    t0=$(date +%s)
    if SKBUILD_CMAKE_ARGS="${SKBUILD_CMAKE_ARGS:-} -DWARMSERVE_NO_KERNELS=ON" \
        run 240 $PY -m pip install --no-build-isolation --no-deps -e . > "$RESULTS/build-no-kernels.log" 2>&1; then
      summary "build without the kernels: OK in $(($(date +%s) - t0)) s"
    else
      summary "build without the kernels FAILED too (see build-no-kernels.log)"
    fi
  fi
fi
$PY - <<'PY' 2>&1 | tee -a "$RESULTS/summary.txt"
from warmserve.memory import cuda_compiled
from warmserve.memory.kernels import kernels_available, kernels_compiled
print("cuda backend compiled:", cuda_compiled(), "| kernels compiled:", kernels_compiled(),
      "| kernels available:", kernels_available())
PY

# 2. tests/gpu, then the memory unit tests on this machine (a failure does not stop the run).
#    The tiled prefill kernel's, the fused layer kernels', the gemv kernel's and the split merge / programmatic
#    launch files run in processes of their own,
#    after the others, so a fault there (a sticky CUDA error) cannot take their results with it.
if want tests; then
  t0=$(date +%s)
  run 170 $PY -m pytest -q -rP -p no:cacheprovider tests/gpu --ignore=tests/gpu/test_prefill_kernel.py \
    --ignore=tests/gpu/test_layer_kernels.py --ignore=tests/gpu/test_gemv.py \
    --ignore=tests/gpu/test_split_merge_and_pdl.py --junitxml="$RESULTS/tests-gpu.xml" \
    > "$RESULTS/tests-gpu.txt" 2>&1
  rc=$?
  summary "tests/gpu: rc=$rc in $(($(date +%s) - t0)) s: $(tail -1 "$RESULTS/tests-gpu.txt")"
  [ $rc -eq 0 ] || grep -E "^(FAILED|ERROR)" "$RESULTS/tests-gpu.txt" | head -20 | tee -a "$RESULTS/summary.txt"
  for f in prefill_kernel layer_kernels gemv split_merge_and_pdl; do
    t0=$(date +%s)
    run 90 $PY -m pytest -q -rP -p no:cacheprovider "tests/gpu/test_$f.py" \
      --junitxml="$RESULTS/tests-gpu-$f.xml" > "$RESULTS/tests-gpu-$f.txt" 2>&1
    rc=$?
    summary "tests/gpu/test_$f.py: rc=$rc in $(($(date +%s) - t0)) s: $(tail -1 "$RESULTS/tests-gpu-$f.txt")"
    [ $rc -eq 0 ] || grep -E "^(FAILED|ERROR)" "$RESULTS/tests-gpu-$f.txt" | head -20 | tee -a "$RESULTS/summary.txt"
  done
fi

# 3. The kernels against the torch path (decode attention, block copies): bench/gpu_kernels.py, ~30 s.
if want tests; then
  t0=$(date +%s)
  run 120 $PY bench/gpu_kernels.py "$RESULTS/kernels" > "$RESULTS/kernels.log" 2>&1
  summary "bench kernels: rc=$? in $(($(date +%s) - t0)) s (kernels.{json,txt,png})"
fi

# 3b. Switching on the GPU: 1, 4 and 10 GiB of weights (the paper's goal: activation of 10 GB < 20 ms).
if want switch; then
  t0=$(date +%s)
  run $(( $(left) > 200 ? 120 : 60 )) $PY -m warmserve bench switch --backend cuda --sizes-gib 1,4,10 \
    --parts activation,move,load,kv --page-mib 8,32 --repeats 5 --json "$RESULTS/switch-cuda.json" --plot "$RESULTS/switch-cuda.png" \
    > "$RESULTS/switch-cuda.txt" 2>&1
  summary "bench switch (cuda): rc=$? in $(($(date +%s) - t0)) s"
  # Issue 13 item 3: load from the host checkpoint cache (registered /dev/shm entry, DMA on 4 streams) vs a pinned
  # tensor's host-to-device copy, interleaved in one run (goal >= 0.8); a run of its own so it has its own limit.
  t0=$(date +%s)
  run 90 $PY -m warmserve bench switch --backend cuda --parts cache --cache-gib 2 --repeats 7 \
    --json "$RESULTS/switch-cache-cuda.json" > "$RESULTS/switch-cache-cuda.txt" 2>&1
  summary "bench switch cache (cuda): rc=$? in $(($(date +%s) - t0)) s: $(tail -1 "$RESULTS/switch-cache-cuda.txt")"
fi

# 3c. The GPU-sized demos (bf16, weights drawn on the GPU, written shard by shard): the 1b always, the 7b when
#     more than 4 minutes are left; then load_model of each from its files vs through the host checkpoint cache.
ENGINE_MODELS="${WARMSERVE_ENGINE_MODELS:-llama-20m llama-90m}"
if want demo; then
  for size in ${WARMSERVE_DEMO_SIZES:-1b 7b}; do
    [ "$size" = 7b ] && [ "$(left)" -lt 240 ] && { summary "demo 7b: skipped ($(left) s left)"; continue; }
    t0=$(date +%s)
    run 150 $PY -m warmserve models demo --size $size --out "$DEMO_DIR" >> "$RESULTS/demo.txt" 2>&1
    rc=$?
    summary "demo $size: rc=$rc in $(($(date +%s) - t0)) s ($(du -sh "$DEMO_DIR/llama-$size" 2>/dev/null | cut -f1))"
    [ $rc -eq 0 ] || continue
    [ "$size" = 1b ] && ENGINE_MODELS="llama-1b $ENGINE_MODELS"
    t0=$(date +%s)
    run 120 $PY -m warmserve bench switch --backend cuda --parts model --checkpoint "$DEMO_DIR/llama-$size" \
      --repeats 3 --json "$RESULTS/model-load-cuda-$size.json" > "$RESULTS/model-load-cuda-$size.txt" 2>&1
    summary "load_model $size via host cache: rc=$? in $(($(date +%s) - t0)) s: $(tail -1 "$RESULTS/model-load-cuda-$size.txt")"
  done
fi

# 3d. CUDA graphs of the decode step (issue 13 item 2) on the 1b demo when it was written (else llama-90m, written
#     here), then on the 7b when it was (the goal: TTFT of a prewarm hit <= 50 ms): capture at prewarm (time,
#     memory), decode with graphs vs eager at batch 1 and 16, TTFT of a prewarm hit.
if want graphs; then
  for size in 1b 7b; do
    out=graphs-cuda; [ "$size" = 7b ] && out=graphs-cuda-7b
    if [ -f "$DEMO_DIR/llama-$size/config.json" ]; then src=(--checkpoint "$DEMO_DIR/llama-$size")
    elif [ "$size" = 1b ]; then src=(--demo llama-90m); else continue; fi
    [ "$(left)" -lt 120 ] && { summary "bench graphs $size: skipped ($(left) s left)"; continue; }
    t0=$(date +%s)
    # 240 s: the 1b took 43 s through part 10 (2026-12-04); parts 11 and 12 recapture the graphs at each switch
    run 240 $PY bench/gpu_graphs.py "$RESULTS/$out" "${src[@]}" --demo-dir "$DEMO_DIR" --repeats 3 \
      > "$RESULTS/$out.log" 2>&1
    rc=$?
    summary "bench graphs ($size): rc=$rc in $(($(date +%s) - t0)) s ($out.{json,txt})"
    # a run stopped by its limit still writes the parts it finished (gpu_graphs.py: SIGTERM)
    if [ -f "$RESULTS/$out.txt" ]; then sed 's/^/  /' "$RESULTS/$out.txt" | tee -a "$RESULTS/summary.txt"; fi
    [ $rc -eq 0 ] || tail -5 "$RESULTS/$out.log"
  done
fi

# 4. The engine with the cuda memory backend against transformers, in what is left but 40 s (for tp and the host
#    switch): the 1b demo first when it was written, then the small demos.
if want engine && [ -z "${ENGINE_MODELS// }" ]; then
  summary "bench engine (cuda): skipped (no models: the 1b demo was not written and WARMSERVE_ENGINE_MODELS is empty)"
elif want engine; then
  t0=$(date +%s)
  # shellcheck disable=SC2086
  run $(( $(left) - 40 )) $PY -m warmserve bench engine --device cuda --threads 8 --repeats 2 \
    --demo-dir "$DEMO_DIR" --models $ENGINE_MODELS \
    --json "$RESULTS/engine-cuda.json" > "$RESULTS/engine-cuda.txt" 2>&1
  summary "bench engine (cuda): rc=$? in $(($(date +%s) - t0)) s (124 = cut at the time budget)"
fi

# 4b. Tensor parallelism over NCCL (issue 14), only on a machine with 2 or more GPUs: a tp-2 start with its
#     communicator prewarmed vs built on demand vs cold (tests/gpu/test_tp_nccl.py ran with the tests).
if want tp; then
  ngpu=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  if [ "${ngpu:-0}" -ge 2 ] && [ "$(left)" -gt 60 ]; then
    t0=$(date +%s)
    run 90 $PY -m warmserve bench tp --device cuda --tp 2 --model qwen2-30m --repeats 5 --memory-gib 4 \
      --json "$RESULTS/tp-cuda.json" > "$RESULTS/tp-cuda.txt" 2>&1
    summary "bench tp (NCCL, tp 2): rc=$? in $(($(date +%s) - t0)) s: $(tail -2 "$RESULTS/tp-cuda.txt" | head -1)"
  else
    summary "bench tp: skipped ($ngpu GPU(s) visible, or no time left)"
  fi
fi

# 5. The host backend on the same machine for comparison, if time is left.
if want switch && [ "$(left)" -gt 30 ]; then
  run 60 $PY -m warmserve bench switch --backend host --sizes-gib 0.25,1 --repeats 3 \
    --json "$RESULTS/switch-host.json" > "$RESULTS/switch-host.txt" 2>&1
  summary "bench switch (host): rc=$?"
fi
summary "done in $(($(date +%s) - start)) s; results in $RESULTS"
