#!/usr/bin/env bash
# Builds warmserve._C under a sanitizer into a folder of its own and runs the memory core's tests against it,
# leaving the installed (or editable) build alone. Usage, from the repository root:
#   bench/sanitize.sh [asan|tsan] [build dir (default /tmp/warmserve-<mode>)] [pytest args (default tests/unit/memory)]
# asan is AddressSanitizer with UndefinedBehaviorSanitizer; tsan is ThreadSanitizer. The CUDA kernels are left out
# (the stub is built: nvcc's device code cannot be sanitized this way); the cuda backend runs on the tests' fake
# libcuda, which they compile with `cc`: under asan a wrapper puts the same sanitizer on it (under tsan a shell
# script started from the instrumented Python dies with SIGSEGV, so the fake libcuda stays uninstrumented there).
# Python is not instrumented: the runtime is LD_PRELOADed, and the package is a copy in the build dir with the
# sanitized _C in it, found through PYTHONPATH (a sitecustomize there drops scikit-build-core's editable finder).
# Under asan, two tests cannot run (deselected): ASan's operator new reports a failed 128 GiB allocation instead of
# throwing std::bad_alloc (test_mem_hardening), and its shadow memory leaves nothing under an RLIMIT_AS
# (test_mem_load_limits). Under tsan the tests that limit RLIMIT_AS or a cgroup's memory fail (the shadow memory),
# and two loads into the same bytes at once are reported: a race on the payload the API allows (last one wins);
# the tokenizers library (Rust threads TSan cannot follow) is suppressed. Leaks: ASAN_OPTIONS=detect_leaks=1:
# log_path=... and grep the logs for ws:: (Python, git and the like leak at exit by design).
set -euo pipefail
mode=${1:-asan}
dir=${2:-/tmp/warmserve-$mode}
shift $(( $# > 2 ? 2 : $# ))
root=$(cd "$(dirname "$0")/.." && pwd)
py=$(python3 -c 'import sys; print(sys.executable)')
case $mode in
  asan) flags="-fsanitize=address,undefined -fno-omit-frame-pointer -g -O1"
        preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
        m=tests/unit/memory t=test_create_slot_with_a_huge_or_overflowing_size_is_a_typed_error_not_a_hang
        skip=(--deselect "$m/test_mem_hardening.py::$t"
              --deselect "$m/test_mem_load_limits.py::test_a_load_that_runs_out_of_host_memory_closes_its_files")
        export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:handle_segv=0:allocator_may_return_null=1}
        export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} ;;
  tsan) flags="-fsanitize=thread -g -O1"
        preload=$(gcc -print-file-name=libtsan.so)
        skip=()
        mkdir -p "$dir" && printf 'called_from_lib:tokenizers.abi3.so\n' > "$dir/tsan.supp"
        export TSAN_OPTIONS=${TSAN_OPTIONS:-handle_segv=0:report_signal_unsafe=0:suppressions=$dir/tsan.supp} ;;
  *) echo "usage: $0 [asan|tsan] [build dir] [pytest args]" >&2; exit 2 ;;
esac
san=${flags%% -g*}
cmake -S "$root" -B "$dir/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWARMSERVE_NO_KERNELS=ON \
  -DPython_EXECUTABLE="$py" -Dpybind11_DIR="$("$py" -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_MODULE_LINKER_FLAGS="$san" >/dev/null
nice -n 10 cmake --build "$dir/build" -j "$(nproc)"
rm -rf "$dir/pkg" && mkdir -p "$dir/pkg" "$dir/bin"
cp -r "$root/python/warmserve" "$dir/pkg/"
rm -f "$dir"/pkg/warmserve/_C*.so && cp "$dir"/build/_C*.so "$dir/pkg/warmserve/"
cat > "$dir/pkg/sitecustomize.py" <<'EOF'
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__name__.startswith("ScikitBuild")]
EOF
# Tests that LD_PRELOAD a shim of their own into a child would drop the runtime: it is put back in front.
cat > "$dir/pkg/sanitizer_preload.py" <<'EOF'
import os
import subprocess
_init, _san = subprocess.Popen.__init__, os.environ["SANITIZER_PRELOAD"]
def _popen(self, *a, **kw):
    env = kw.get("env")
    if env and _san not in env.get("LD_PRELOAD", ""):
        kw["env"] = dict(env, LD_PRELOAD=_san + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else ""))
    return _init(self, *a, **kw)
subprocess.Popen.__init__ = _popen
EOF
if [ "$mode" = asan ]; then
  printf '#!/bin/sh\nexec /usr/bin/cc %s "$@"\n' "$flags" > "$dir/bin/cc" && chmod +x "$dir/bin/cc"
fi
cd "$root"
[ $# -gt 0 ] || set -- tests/unit/memory
PATH="$dir/bin:$PATH" PYTHONPATH="$dir/pkg" SANITIZER_PRELOAD="$preload" LD_PRELOAD="$preload" \
  nice -n 10 "$py" -m pytest -q -p no:cacheprovider -p sanitizer_preload "${skip[@]}" "$@"
