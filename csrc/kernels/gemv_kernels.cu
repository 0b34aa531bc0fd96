// Matrix times a few vectors (kernels.h: gemv), for the matmuls of a decode step at batch 1 to kGemvMaxRows. On an
// H200 a batch-1 step of the 1b demo spent 0.70 of its 1.27 ms in cuBLAS's matmuls: the 64 MB gate_up streamed at
// 3.7 TB/s, but the 32 MB down projection ran split-K plus a reduce kernel at 2.6 TB/s, and qkv and o (13 and
// 8 MB) at 1.8 TB/s (bench/engine/README.md). Here one warp computes one output feature for every row: its lanes
// stream the weight row in 16-byte vectors, U of them in flight per lane (4 or 8), and one shuffle reduction ends
// it; no second kernel. Weights are read once, with the streaming cache hint; x is read through the read-only cache
// by every warp of a block.
//
// Under programmatic dependent launch (kernels.h: set_programmatic_launch) a block may start while the kernel
// before it (the norm or activation that writes x) still runs: it loads its first round of weights into registers
// and asks L2 for the rest of its rows before it waits for x, so the weight stream of a small matrix (qkv and o of
// the 1b: 13 and 8 MB, a few microseconds at HBM speed) does not start from nothing after every kernel boundary.
//
// gemv_norm and gemv_silu take the kernel before a matmul into it (the residual add + norm before qkv and gate_up,
// silu * up before down): 48 of a 1b batch-1 step's 209 launches, 1.2-1.7 us each in its replay profile (2026-12-04)
// for 4 KB to 11 KB of input. Each block computes that input into shared memory itself, reading it from L2 (a few
// KB per block, under the first weight loads, which are issued before it), instead of a kernel boundary and a
// round trip through memory between the two.
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>

#include "common.cuh"
#include "kernels.h"

namespace ws {
namespace kernels {
namespace {

constexpr int kGemvWarps = 8;  // output features per block
// U (a template parameter below, kernels.h: in_flight): 16-byte weight vectors in flight per lane, 4 or 8. With 4
// a row of 2048 bf16 weights (4 KB, qkv and o of the 1b) takes two round trips to memory per warp, the down
// projection's 5632 six; 8 halves them at twice the registers for weights.

// The first U 16-byte vectors of this lane's share of a weight row (before pdl_wait: weights only), and
// under programmatic launch the rest of the row asked into L2 while the kernel before drains.
template <int U>
__device__ __forceinline__ void load_first(const int4* wrow, int64_t n_vec, int lane, bool early, int4 (&wv)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t c = lane + int64_t(u) * 32;
    wv[u] = c < n_vec ? __ldcs(wrow + c) : make_int4(0, 0, 0, 0);
  }
  if (early)
    for (int64_t c = lane + 32 * U; c < n_vec; c += 32)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(wrow + c));
}

// One warp's dot products of its weight row with the M rows of x (k elements each), wv holding the row's first
// vectors (load_first); the warp's sum lands in every lane. x in global memory, read through the read-only cache,
// or (kStaged) in shared memory.
template <class T, int M, bool kStaged, int U>
__device__ __forceinline__ void dot_rows(const T* x, const int4* wrow, int64_t k, int lane, int4 (&wv)[U],
                                         float (&acc)[M]) {
  constexpr int V = 16 / int(sizeof(T));  // elements per 16-byte vector
  const int64_t n_vec = k / V;
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  for (int64_t base = lane; base < n_vec; base += 32 * U) {
    if (base != lane) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t c = base + int64_t(u) * 32;
        wv[u] = c < n_vec ? __ldcs(wrow + c) : make_int4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = base + int64_t(u) * 32;
      if (c >= n_vec) break;
      const T* we = reinterpret_cast<const T*>(&wv[u]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const int4* xrow = reinterpret_cast<const int4*>(x + m * k);
        const int4 xv = kStaged ? xrow[c] : __ldg(xrow + c);
        const T* xe = reinterpret_cast<const T*>(&xv);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[m] = fmaf(to_f(we[e]), to_f(xe[e]), acc[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
}

template <class T, int M>
__device__ __forceinline__ void store_out(const float (&acc)[M], const T* b, T* y, int64_t f, int64_t n, int lane) {
  if (lane != 0) return;
#pragma unroll
  for (int m = 0; m < M; ++m) y[m * n + f] = from_f<T>(b ? acc[m] + to_f(b[f]) : acc[m]);
}

template <class T, int M, int U>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                int64_t k, int64_t n, bool early) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t f = int64_t(blockIdx.x) * kGemvWarps + warp;  // the output feature
  if (f >= n) {  // whole warps only: the shuffles below stay full
    pdl_wait();
    return;
  }
  const int4* wrow = reinterpret_cast<const int4*>(w + f * k);
  int4 wv[U];
  load_first<U>(wrow, k / (16 / int(sizeof(T))), lane, early, wv);
  pdl_wait();  // x (and y's memory) belong to the kernels before this one
  pdl_trigger();
  float acc[M];
  dot_rows<T, M, false, U>(x, wrow, k, lane, wv, acc);
  store_out(acc, b, y, f, n, lane);
}

// What a staged gemv computes its input from (kernels.h: gemv_norm, gemv_silu).
enum class Prologue { kNorm, kSilu };

// gemv over an input each block computes into shared memory first. Every thread of the block takes part in that
// (its barriers), the warps past n included; each element is rounded as the separate kernel rounds it
// (layer_kernels.cu: add_rms_norm_vec_kernel, silu_mul_kernel), so only the norm's float32 sum is in another order.
// kNorm: src = x [M, k], res [M, k] or null, norm_w [k], h_out written by block 0 alone (the other blocks add
// x + res again for themselves: cheaper than a grid-wide barrier). kSilu: src = gu [M, 2k].
template <class T, int M, Prologue P, int U>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_staged_kernel(const T* __restrict__ src, const T* __restrict__ res, const T* __restrict__ norm_w,
                       T* __restrict__ h_out, float eps, const T* __restrict__ w, const T* __restrict__ b,
                       T* __restrict__ y, int64_t k, int64_t n, bool early) {
  extern __shared__ int4 staged[];  // int4: 16-byte aligned for dot_rows' vector reads
  T* xs = reinterpret_cast<T*>(staged);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t f = int64_t(blockIdx.x) * kGemvWarps + warp;
  const bool active = f < n;
  const int4* wrow = reinterpret_cast<const int4*>(w + (active ? f : 0) * k);
  int4 wv[U];
  if (active) load_first<U>(wrow, k / (16 / int(sizeof(T))), lane, early, wv);
  pdl_wait();  // the input and y's memory belong to the kernels before this one
  pdl_trigger();
  if constexpr (P == Prologue::kSilu) {
    for (int64_t i = threadIdx.x; i < M * k; i += blockDim.x) {
      const int64_t m = i / k, j = i % k;
      const float g = to_f(src[m * 2 * k + j]);
      const T s = from_f<T>(g / (1.f + expf(-g)));  // expf, as silu_mul_kernel (torch's silu uses the exact one)
      xs[i] = from_f<T>(to_f(s) * to_f(src[m * 2 * k + k + j]));
    }
  } else {
    __shared__ float part[M][kGemvWarps];
    float ss[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      ss[m] = 0.f;
      for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
        T h = src[m * k + j];
        if (res) {
          h = from_f<T>(to_f(h) + to_f(res[m * k + j]));
          if (blockIdx.x == 0) h_out[m * k + j] = h;
        }
        xs[m * k + j] = h;
        ss[m] += to_f(h) * to_f(h);
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) ss[m] += __shfl_xor_sync(0xffffffffu, ss[m], o);
      if (lane == 0) part[m][warp] = ss[m];
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float total = 0.f;
      for (int i = 0; i < kGemvWarps; ++i) total += part[m][i];
      const float r = rsqrtf(total / float(k) + eps);
      for (int64_t j = threadIdx.x; j < k; j += blockDim.x)  // the elements this thread wrote itself
        xs[m * k + j] = from_f<T>(to_f(norm_w[j]) * to_f(from_f<T>(to_f(xs[m * k + j]) * r)));
    }
  }
  __syncthreads();
  if (!active) return;
  float acc[M];
  dot_rows<T, M, true, U>(xs, wrow, k, lane, wv, acc);
  store_out(acc, b, y, f, n, lane);
}

// f(std::integral_constant<int, U>{}) for in_flight 4 or 8 (checked by the callers).
template <class F>
void with_in_flight(int in_flight, F f) {
  if (in_flight == 8) f(std::integral_constant<int, 8>{});
  else f(std::integral_constant<int, 4>{});
}

void check_in_flight(int in_flight, const char* what) {
  if (in_flight != 4 && in_flight != 8)
    throw invalid(std::string(what) + ": in_flight must be 4 or 8, got " + std::to_string(in_flight));
}

template <class T, int U>
void launch_gemv(const T* x, const T* w, const T* b, T* y, int64_t n_rows, int64_t k, int64_t n, cudaStream_t st) {
  const dim3 blocks(unsigned((n + kGemvWarps - 1) / kGemvWarps)), threads(kGemvWarps * 32);
  const bool early = programmatic_launch();
  const char* what = "gemv_kernel launch";
  switch (n_rows) {
    case 1: launch(gemv_kernel<T, 1, U>, blocks, threads, st, what, x, w, b, y, k, n, early); break;
    case 2: launch(gemv_kernel<T, 2, U>, blocks, threads, st, what, x, w, b, y, k, n, early); break;
    case 3: launch(gemv_kernel<T, 3, U>, blocks, threads, st, what, x, w, b, y, k, n, early); break;
    default: launch(gemv_kernel<T, 4, U>, blocks, threads, st, what, x, w, b, y, k, n, early); break;
  }
}

template <class T, Prologue P, int M, int U>
void launch_staged_rows(const T* src, const T* res, const T* norm_w, T* h_out, float eps, const T* w, const T* b,
                        T* y, int64_t k, int64_t n, cudaStream_t st) {
  const dim3 blocks(unsigned((n + kGemvWarps - 1) / kGemvWarps)), threads(kGemvWarps * 32);
  launch_smem(gemv_staged_kernel<T, M, P, U>, blocks, threads, size_t(M * k) * sizeof(T), st,
              "gemv_staged_kernel launch", src, res, norm_w, h_out, eps, w, b, y, k, n, programmatic_launch());
}

template <Prologue P>
void launch_staged(uintptr_t src, uintptr_t res, uintptr_t norm_w, uintptr_t h_out, float eps, uintptr_t w,
                   uintptr_t b, uintptr_t y, int64_t n_rows, int64_t k, int64_t n, int dtype, int in_flight,
                   uintptr_t stream, const char* what) {
  if (n_rows <= 0 || n <= 0) return;
  check_in_flight(in_flight, what);
  const int64_t esize = dtype == kFloat32 ? 4 : 2;
  if (n_rows > kGemvMaxRows || n_rows * k * esize > kGemvStagedMaxBytes)
    throw invalid(std::string(what) + ": at most " + std::to_string(kGemvMaxRows) + " rows and " +
                  std::to_string(kGemvStagedMaxBytes) + " bytes of input, got " + std::to_string(n_rows) + " x " +
                  std::to_string(k));
  if ((k * esize) % 16 || w % 16)
    throw invalid(std::string(what) + ": rows of w must be whole 16-byte vectors, 16-byte aligned (k = " +
                  std::to_string(k) + ")");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const auto go = [&](auto tag) {
    using T = decltype(tag);
    const auto p = [](uintptr_t a) { return reinterpret_cast<T*>(a); };
    with_in_flight(in_flight, [&](auto u) {
      constexpr int U = decltype(u)::value;
      const auto args = std::make_tuple(p(src), p(res), p(norm_w), p(h_out), eps, p(w), p(b), p(y), k, n, st);
      switch (n_rows) {
        case 1: std::apply(launch_staged_rows<T, P, 1, U>, args); break;
        case 2: std::apply(launch_staged_rows<T, P, 2, U>, args); break;
        case 3: std::apply(launch_staged_rows<T, P, 3, U>, args); break;
        default: std::apply(launch_staged_rows<T, P, 4, U>, args);
      }
    });
  };
  dispatch(dtype, what, go);
}

}  // namespace

void gemv_norm(uintptr_t x, uintptr_t res, uintptr_t norm_w, uintptr_t h_out, float eps, uintptr_t w, uintptr_t b,
               uintptr_t y, int64_t n_rows, int64_t k, int64_t n, int dtype, int in_flight, uintptr_t stream) {
  launch_staged<Prologue::kNorm>(x, res, norm_w, h_out, eps, w, b, y, n_rows, k, n, dtype, in_flight, stream,
                                 "gemv_norm");
}

void gemv_silu(uintptr_t gu, uintptr_t w, uintptr_t b, uintptr_t y, int64_t n_rows, int64_t k, int64_t n, int dtype,
               int in_flight, uintptr_t stream) {
  launch_staged<Prologue::kSilu>(gu, 0, 0, 0, 0.f, w, b, y, n_rows, k, n, dtype, in_flight, stream, "gemv_silu");
}

void gemv(uintptr_t x, uintptr_t w, uintptr_t b, uintptr_t y, int64_t n_rows, int64_t k, int64_t n, int dtype,
          int in_flight, uintptr_t stream) {
  if (n_rows <= 0 || n <= 0) return;
  if (n_rows > kGemvMaxRows)
    throw invalid("gemv: at most " + std::to_string(kGemvMaxRows) + " rows, got " + std::to_string(n_rows));
  check_in_flight(in_flight, "gemv");
  const int64_t esize = dtype == kFloat32 ? 4 : 2;
  if ((k * esize) % 16 || (x | w) % 16)
    throw invalid("gemv: rows of x and w must be whole 16-byte vectors, 16-byte aligned (k = " + std::to_string(k) +
                  ")");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const auto go = [&](auto tag) {
    using T = decltype(tag);
    with_in_flight(in_flight, [&](auto u) {
      launch_gemv<T, decltype(u)::value>(reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(w),
                                         reinterpret_cast<const T*>(b), reinterpret_cast<T*>(y), n_rows, k, n, st);
    });
  };
  dispatch(dtype, "gemv", go);
}

}  // namespace kernels
}  // namespace ws
