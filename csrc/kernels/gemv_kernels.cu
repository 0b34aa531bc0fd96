// Matrix times a few vectors (kernels.h: gemv), for the matmuls of a decode step at batch 1 to kGemvMaxRows. On an
// H200 a batch-1 step of the 1b demo spent 0.70 of its 1.27 ms in cuBLAS's matmuls: the 64 MB gate_up streamed at
// 3.7 TB/s, but the 32 MB down projection ran split-K plus a reduce kernel at 2.6 TB/s, and qkv and o (13 and
// 8 MB) at 1.8 TB/s (bench/engine/README.md). Here one warp computes one output feature for every row: its lanes
// stream the weight row in 16-byte vectors, kGemvUnroll of them in flight per lane, and one shuffle reduction ends
// it; no second kernel. Weights are read once, with the streaming cache hint; x is read through the read-only cache
// by every warp of a block.
//
// Under programmatic dependent launch (kernels.h: set_programmatic_launch) a block may start while the kernel
// before it (the norm or activation that writes x) still runs: it loads its first round of weights into registers
// and asks L2 for the rest of its rows before it waits for x, so the weight stream of a small matrix (qkv and o of
// the 1b: 13 and 8 MB, a few microseconds at HBM speed) does not start from nothing after every kernel boundary.
#include <cstdint>
#include <string>

#include "common.cuh"
#include "kernels.h"

namespace ws {
namespace kernels {
namespace {

constexpr int kGemvWarps = 8;   // output features per block
constexpr int kGemvUnroll = 4;  // 16-byte weight vectors in flight per lane

template <class T, int M>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                int64_t k, int64_t n, bool early) {
  constexpr int V = 16 / int(sizeof(T));  // elements per 16-byte vector
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t f = int64_t(blockIdx.x) * kGemvWarps + warp;  // the output feature
  if (f >= n) {  // whole warps only: the shuffles below stay full
    pdl_wait();
    return;
  }
  const int64_t n_vec = k / V;
  const int4* wrow = reinterpret_cast<const int4*>(w + f * k);
  int4 wv[kGemvUnroll];
#pragma unroll
  for (int u = 0; u < kGemvUnroll; ++u) {
    const int64_t c = lane + int64_t(u) * 32;
    wv[u] = c < n_vec ? __ldcs(wrow + c) : make_int4(0, 0, 0, 0);
  }
  if (early)  // launched programmatically: the rest of the row into L2 while the kernel before drains
    for (int64_t c = lane + 32 * kGemvUnroll; c < n_vec; c += 32)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(wrow + c));
  pdl_wait();  // x (and y's memory) belong to the kernels before this one
  pdl_trigger();
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  for (int64_t base = lane; base < n_vec; base += 32 * kGemvUnroll) {
    if (base != lane) {
#pragma unroll
      for (int u = 0; u < kGemvUnroll; ++u) {
        const int64_t c = base + int64_t(u) * 32;
        wv[u] = c < n_vec ? __ldcs(wrow + c) : make_int4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
      const int64_t c = base + int64_t(u) * 32;
      if (c >= n_vec) break;
      const T* we = reinterpret_cast<const T*>(&wv[u]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const int4 xv = __ldg(reinterpret_cast<const int4*>(x + m * k) + c);
        const T* xe = reinterpret_cast<const T*>(&xv);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[m] = fmaf(to_f(we[e]), to_f(xe[e]), acc[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float v = acc[m];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) y[m * n + f] = from_f<T>(b ? v + to_f(b[f]) : v);
  }
}

template <class T>
void launch_gemv(const T* x, const T* w, const T* b, T* y, int64_t n_rows, int64_t k, int64_t n, cudaStream_t st) {
  const dim3 blocks(unsigned((n + kGemvWarps - 1) / kGemvWarps)), threads(kGemvWarps * 32);
  const bool early = programmatic_launch();
  const char* what = "gemv_kernel launch";
  switch (n_rows) {
    case 1: launch(gemv_kernel<T, 1>, blocks, threads, st, what, x, w, b, y, k, n, early); break;
    case 2: launch(gemv_kernel<T, 2>, blocks, threads, st, what, x, w, b, y, k, n, early); break;
    case 3: launch(gemv_kernel<T, 3>, blocks, threads, st, what, x, w, b, y, k, n, early); break;
    default: launch(gemv_kernel<T, 4>, blocks, threads, st, what, x, w, b, y, k, n, early); break;
  }
}

}  // namespace

void gemv(uintptr_t x, uintptr_t w, uintptr_t b, uintptr_t y, int64_t n_rows, int64_t k, int64_t n, int dtype,
          uintptr_t stream) {
  if (n_rows <= 0 || n <= 0) return;
  if (n_rows > kGemvMaxRows)
    throw invalid("gemv: at most " + std::to_string(kGemvMaxRows) + " rows, got " + std::to_string(n_rows));
  const int64_t esize = dtype == kFloat32 ? 4 : 2;
  if ((k * esize) % 16 || (x | w) % 16)
    throw invalid("gemv: rows of x and w must be whole 16-byte vectors, 16-byte aligned (k = " + std::to_string(k) +
                  ")");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      launch_gemv(reinterpret_cast<const float*>(x), reinterpret_cast<const float*>(w),
                  reinterpret_cast<const float*>(b), reinterpret_cast<float*>(y), n_rows, k, n, st);
      break;
    case kFloat16:
      launch_gemv(reinterpret_cast<const __half*>(x), reinterpret_cast<const __half*>(w),
                  reinterpret_cast<const __half*>(b), reinterpret_cast<__half*>(y), n_rows, k, n, st);
      break;
    case kBFloat16:
      launch_gemv(reinterpret_cast<const __nv_bfloat16*>(x), reinterpret_cast<const __nv_bfloat16*>(w),
                  reinterpret_cast<const __nv_bfloat16*>(b), reinterpret_cast<__nv_bfloat16*>(y), n_rows, k, n, st);
      break;
    default: throw invalid("gemv: unknown dtype code " + std::to_string(dtype));
  }
}

}  // namespace kernels
}  // namespace ws
