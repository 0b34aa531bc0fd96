// Helpers shared by the kernel sources of csrc/kernels: launch checks that throw ws::Error, and conversions between
// the element types and float. In an anonymous namespace: each .cu file that includes it has its own copy.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "../errors.h"

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
