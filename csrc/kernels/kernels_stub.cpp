// kernels.h for builds without the CUDA toolkit: the module still imports, and each kernel raises
// BackendUnavailableError saying how to get them.
#include "../errors.h"
#include "kernels.h"

namespace ws {
namespace kernels {
namespace {
[[noreturn]] void unavailable() {
  throw Error(ErrorKind::BackendUnavailable,
              "this build of warmserve has no CUDA kernels: nvcc was not found when it was built. Fix: install the "
              "CUDA toolkit (nvcc on PATH, or CUDACXX=/usr/local/cuda/bin/nvcc) and reinstall warmserve");
}
}  // namespace

bool compiled() { return false; }
int device_count() { return 0; }
bool set_programmatic_launch(bool on) {
  if (on) unavailable();
  return false;
}
bool programmatic_launch() { return false; }
void write_kv(uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int64_t, int, uintptr_t) {
  unavailable();
}
void paged_attention(const PagedAttention&) { unavailable(); }
void prefill_attention(uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, uintptr_t, uintptr_t, uintptr_t, int64_t, int,
                       int, int, int64_t, int, int64_t, int64_t, int, float, int, uintptr_t) {
  unavailable();
}
void copy_blocks(uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, uintptr_t) { unavailable(); }
void copy_bytes(uintptr_t, uintptr_t, int64_t, uintptr_t) { unavailable(); }
void add_rms_norm(uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, float, int, uintptr_t) {
  unavailable();
}
void silu_mul(uintptr_t, uintptr_t, int64_t, int64_t, int, uintptr_t) { unavailable(); }
void rope_qkv(uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, int, int, int, int,
              uintptr_t) {
  unavailable();
}
void rope_qkv_cache(uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int,
                    int, int, int, uintptr_t) {
  unavailable();
}
void gemv(uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int, int, uintptr_t) {
  unavailable();
}
void gemv_norm(uintptr_t, uintptr_t, uintptr_t, uintptr_t, float, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t,
               int64_t, int, int, uintptr_t) {
  unavailable();
}
void gemv_silu(uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int, int, uintptr_t) {
  unavailable();
}
}  // namespace kernels
}  // namespace ws
