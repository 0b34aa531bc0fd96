// Helpers shared by the kernel sources of csrc/kernels: launch checks that throw ws::Error, and conversions between
// the element types and float. In an anonymous namespace: each .cu file that includes it has its own copy.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "../errors.h"
#include "kernels.h"

namespace ws {
namespace kernels {
namespace {

void check(cudaError_t r, const char* what) {
  if (r == cudaSuccess) return;
  Error e(ErrorKind::Driver, std::string(what) + " failed: " + cudaGetErrorName(r) + " (" + cudaGetErrorString(r) +
                                 ")");
  e.code = int64_t(r);
  e.name = cudaGetErrorName(r);
  throw e;
}

void check_launch(const char* what) { check(cudaGetLastError(), what); }

// Programmatic dependent launch (kernels.h: set_programmatic_launch). A kernel launched with the attribute may
// start before the kernel ahead of it in the stream has finished, so everything it does before pdl_wait() must
// neither read memory an earlier kernel writes nor write memory at all (the caching allocator hands a freed buffer
// to the next kernel in stream order): only weights are touched there. Every block of such a kernel reaches
// pdl_wait() before it exits, so a kernel's completion still implies its predecessors' (the ordering later
// kernels, graphed or not, rely on). pdl_trigger() lets the next kernel be scheduled: called once a block has
// waited, it can only bring the next kernel's blocks in early to wait, never let them pass. Both are no-ops in a
// kernel launched without the attribute, and compiled out below sm_90.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem_bytes, st>>>(args...), with the programmatic-serialization attribute when it is
// switched on. smem_bytes: dynamic shared memory (above 48 KB the caller raises the kernel's limit first).
template <class... KArgs, class... Args>
void launch_smem(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t st,
                 const char* what, Args&&... args) {
  if (!programmatic_launch()) {
    kernel<<<grid, block, smem_bytes, st>>>(std::forward<Args>(args)...);
    check_launch(what);
    return;
  }
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem_bytes, cfg.stream = st;
  cfg.attrs = attr, cfg.numAttrs = 1;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), what);
}

// launch_smem without dynamic shared memory.
template <class... KArgs, class... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t st, const char* what, Args&&... args) {
  launch_smem(kernel, grid, block, 0, st, what, std::forward<Args>(args)...);
}

// Calls f with a value of the element type of dtype (f is a generic lambda that launches the kernel for it).
template <class F>
void dispatch(int dtype, const char* what, F f) {
  switch (dtype) {
    case kFloat32: f(float{}); break;
    case kFloat16: f(__half{}); break;
    case kBFloat16: f(__nv_bfloat16{}); break;
    default: throw invalid(std::string(what) + ": unknown dtype code " + std::to_string(dtype));
  }
}

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

}  // namespace
}  // namespace kernels
}  // namespace ws
