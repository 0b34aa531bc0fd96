// The small per-layer operations of a decoder step, fused (kernels.h: add_rms_norm, silu_mul, rope_qkv). Each one
// replaces several torch kernels, and at batch 1 a step is mostly such launches: on an H200 the 1b demo's decode
// step took 1.85 ms with CUDA graphs against 0.48 ms of weight reads (bench/engine/README.md, 2026-11-28), about
// 30 kernels a layer of which 7 are matmuls. Each kernel rounds to the element type where the torch ops of
// engine/model.py do (a float32 value rounded once per torch op), so the results match those ops' up to the order
// of one float32 sum (the norm's mean of squares).
#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>

#include "common.cuh"
#include "kernels.h"

namespace ws {
namespace kernels {
namespace {

constexpr int kNormThreads = 256;

// One block per row. v = x (+ res, rounded to T: torch's h + o); h_out = v when res is given; out = w * T(v *
// rsqrt(mean(v^2) + eps)), the product rounded to T (engine/model.py: rms_norm in float32, .to(dtype), w *).
template <class T>
__global__ void __launch_bounds__(kNormThreads)
    add_rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ res, const T* __restrict__ w,
                        T* __restrict__ out, T* __restrict__ h_out, int64_t hidden, float eps) {
  pdl_wait();  // common.cuh: nothing is read or written before it
  pdl_trigger();
  const int64_t base = int64_t(blockIdx.x) * hidden;
  float ss = 0.f;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
    float v = to_f(x[base + j]);
    if (res) {
      const T h = from_f<T>(v + to_f(res[base + j]));
      h_out[base + j] = h;
      v = to_f(h);
    }
    ss += v * v;
  }
  __shared__ float part[kNormThreads / 32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < kNormThreads / 32; ++i) total += part[i];
  const float r = rsqrtf(total / float(hidden) + eps);
  const T* src = res ? h_out : x;  // each thread reads back only what it wrote itself
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x)
    out[base + j] = from_f<T>(to_f(w[j]) * to_f(from_f<T>(to_f(src[base + j]) * r)));
}

// The same per row for rows of 16-byte vectors (hidden a multiple of 16 / sizeof(T), every pointer 16-aligned): each
// thread loads its kVecs vectors of x, res and w at once into registers and keeps them until the output is
// written. The loop above waits one memory latency per element a thread handles, twice over (the read-back of h
// after the sum): on an H200 that was 6.7 us per call at batch 1 and hidden 2048, 220 us of a 1.49 ms 1b decode
// step (bench/gpu_graphs.py part 5, 2026-11-28); torch's norm alone took 1.9 us.
template <class T, int kVecs>
__global__ void __launch_bounds__(1024)
    add_rms_norm_vec_kernel(const T* __restrict__ x, const T* __restrict__ res, const T* __restrict__ w,
                            T* __restrict__ out, T* __restrict__ h_out, int64_t hidden, float eps) {
  pdl_wait();  // common.cuh: nothing is read or written before it
  pdl_trigger();
  constexpr int V = 16 / sizeof(T);
  union Pack {
    int4 raw;
    T e[V];
  };
  const int64_t base = int64_t(blockIdx.x) * hidden;
  const int n_vec = int(hidden / V);
  Pack xv[kVecs], rv[kVecs], wv[kVecs];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int c = threadIdx.x + i * blockDim.x;
    if (c < n_vec) {
      xv[i].raw = reinterpret_cast<const int4*>(x + base)[c];
      if (res) rv[i].raw = reinterpret_cast<const int4*>(res + base)[c];
      wv[i].raw = reinterpret_cast<const int4*>(w)[c];
    }
  }
  float v[kVecs][V];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int c = threadIdx.x + i * blockDim.x;
    if (c >= n_vec) continue;
    Pack h;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      h.e[e] = res ? from_f<T>(to_f(xv[i].e[e]) + to_f(rv[i].e[e])) : xv[i].e[e];
      v[i][e] = to_f(h.e[e]);
      ss += v[i][e] * v[i][e];
    }
    if (res) reinterpret_cast<int4*>(h_out + base)[c] = h.raw;
  }
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < int(blockDim.x / 32); ++i) total += part[i];
  const float r = rsqrtf(total / float(hidden) + eps);
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int c = threadIdx.x + i * blockDim.x;
    if (c >= n_vec) continue;
    Pack o;
#pragma unroll
    for (int e = 0; e < V; ++e) o.e[e] = from_f<T>(to_f(wv[i].e[e]) * to_f(from_f<T>(v[i][e] * r)));
    reinterpret_cast<int4*>(out + base)[c] = o.raw;
  }
}

// out[r, j] = T(T(silu(g)) * u) with g = gu[r, j], u = gu[r, inter + j] (gu.chunk(2, -1); F.silu(g) * u).
template <class T>
__global__ void silu_mul_kernel(const T* __restrict__ gu, T* __restrict__ out, int64_t n, int64_t inter) {
  pdl_wait();  // common.cuh: nothing is read or written before it
  pdl_trigger();
  const int64_t total = n * inter, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / inter, j = i % inter;
    const float g = to_f(gu[r * 2 * inter + j]);
    const T s = from_f<T>(g / (1.f + expf(-g)));  // expf, not __expf: torch's silu uses the exact one
    out[i] = from_f<T>(to_f(s) * to_f(gu[r * 2 * inter + inter + j]));
  }
}

// Where rope_qkv_kernel puts the key and value heads: their own tensors k and v, or (cache set) the layer's K and V
// rows of the paged cache, as write_kv would copy them there (write_rows_kernel): row rows[r] + k_off (or v_off),
// head h at h * head_dim; a negative row (a graph's padding) writes nothing.
template <class T>
struct KVDest {
  T* k = nullptr;
  T* v = nullptr;
  T* cache = nullptr;
  const int64_t* rows = nullptr;
  int64_t k_off = 0, v_off = 0;
};

// grid (tokens, heads + 2 kv_heads), head_dim threads: block (r, hh) reads head hh of token r's qkv row; query and
// key heads are rotated (engine/rope.py apply_rope: T(T(x cos) + T(rotate_half(x) sin))), value heads copied, each
// into its own contiguous tensor or the keys and values into the cache (KVDest).
template <class T>
__global__ void rope_qkv_kernel(const T* __restrict__ qkv, const T* __restrict__ cos, const T* __restrict__ sin,
                                T* __restrict__ q, KVDest<T> kv, int heads, int kv_heads) {
  pdl_wait();  // common.cuh: nothing is read or written before it
  pdl_trigger();
  const int D = blockDim.x, d = threadIdx.x, half = D / 2;
  const int64_t r = blockIdx.x;
  const int hh = blockIdx.y;
  const T* src = qkv + (r * (heads + 2 * kv_heads) + hh) * D;
  const bool is_v = hh >= heads + kv_heads;
  T* dst;
  if (hh < heads) {
    dst = q + (r * heads + hh) * D;
  } else if (kv.cache) {
    const int64_t row = kv.rows[r];
    if (row < 0) return;
    const int64_t head = is_v ? hh - heads - kv_heads : hh - heads;
    dst = kv.cache + (row + (is_v ? kv.v_off : kv.k_off)) * int64_t(kv_heads) * D + head * D;
  } else {
    dst = is_v ? kv.v + (r * kv_heads + hh - heads - kv_heads) * D : kv.k + (r * kv_heads + hh - heads) * D;
  }
  if (is_v) {
    dst[d] = src[d];
    return;
  }
  const float x = to_f(src[d]);
  const float rot = d < half ? -to_f(src[d + half]) : to_f(src[d - half]);
  // _rn intrinsics: nvcc would otherwise fuse a product and the sum into one FMA (one rounding where torch has two)
  const T a = from_f<T>(__fmul_rn(x, to_f(cos[r * D + d])));
  const T b = from_f<T>(__fmul_rn(rot, to_f(sin[r * D + d])));
  dst[d] = from_f<T>(__fadd_rn(to_f(a), to_f(b)));
}

}  // namespace

void add_rms_norm(uintptr_t x, uintptr_t res, uintptr_t w, uintptr_t out, uintptr_t h_out, int64_t n_rows,
                  int64_t hidden, float eps, int dtype, uintptr_t stream) {
  if (n_rows <= 0 || hidden <= 0) return;  // nothing to normalise (and no block of 0 threads to launch)
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const bool aligned = ((x | res | w | out | h_out) % 16) == 0;
  dispatch(dtype, "add_rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const auto args = std::make_tuple(reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(res),
                                      reinterpret_cast<const T*>(w), reinterpret_cast<T*>(out),
                                      reinterpret_cast<T*>(h_out), hidden, eps);
    constexpr int64_t V = 16 / sizeof(T);
    const int64_t n_vec = hidden / V;
    // threads: one vector each up to 1024 threads, then up to 4 vectors a thread (hidden <= 32768 at 2 bytes)
    const int64_t threads = std::min<int64_t>(1024, (n_vec + 31) / 32 * 32);
    const int64_t per_thread = (n_vec + threads - 1) / std::max<int64_t>(threads, 1);
    const auto go = [&](auto kernel, int64_t block) {
      std::apply([&](auto... a) {
        launch(kernel, dim3(unsigned(n_rows)), dim3(unsigned(block)), st, "add_rms_norm_kernel launch", a...);
      }, args);
    };
    if (!aligned || hidden % V || per_thread > 4) {
      go(add_rms_norm_kernel<T>, kNormThreads);
    } else if (per_thread == 1) {
      go(add_rms_norm_vec_kernel<T, 1>, threads);
    } else if (per_thread == 2) {
      go(add_rms_norm_vec_kernel<T, 2>, threads);
    } else {
      go(add_rms_norm_vec_kernel<T, 4>, threads);
    }
  });
}

void silu_mul(uintptr_t gu, uintptr_t out, int64_t n_rows, int64_t inter, int dtype, uintptr_t stream) {
  if (n_rows <= 0 || inter <= 0) return;  // nothing to do, and a grid of 0 blocks is an invalid launch
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const int64_t blocks = std::min<int64_t>((n_rows * inter + 255) / 256, 65535);
  dispatch(dtype, "silu_mul", [&](auto tag) {
    using T = decltype(tag);
    launch(silu_mul_kernel<T>, dim3(unsigned(blocks)), dim3(256), st, "silu_mul_kernel launch",
           reinterpret_cast<const T*>(gu), reinterpret_cast<T*>(out), n_rows, inter);
  });
}

namespace {

// rope_qkv and rope_qkv_cache: kv_of(T) gives the KVDest for the element type.
template <class F>
void launch_rope(uintptr_t qkv, uintptr_t cos, uintptr_t sin, uintptr_t q, int64_t n_rows, int heads, int kv_heads,
                 int head_dim, int dtype, uintptr_t stream, const char* what, F kv_of) {
  if (n_rows <= 0) return;
  if (head_dim % 2 || head_dim < 2 || head_dim > 1024)
    throw invalid(std::string(what) + ": head_dim must be even and at most 1024, got " + std::to_string(head_dim));
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const dim3 grid(unsigned(n_rows), unsigned(heads + 2 * kv_heads));
  dispatch(dtype, what, [&](auto tag) {
    using T = decltype(tag);
    launch(rope_qkv_kernel<T>, grid, dim3(unsigned(head_dim)), st, "rope_qkv_kernel launch",
           reinterpret_cast<const T*>(qkv), reinterpret_cast<const T*>(cos), reinterpret_cast<const T*>(sin),
           reinterpret_cast<T*>(q), kv_of(tag), heads, kv_heads);
  });
}

}  // namespace

void rope_qkv(uintptr_t qkv, uintptr_t cos, uintptr_t sin, uintptr_t q, uintptr_t k, uintptr_t v, int64_t n_rows,
              int heads, int kv_heads, int head_dim, int dtype, uintptr_t stream) {
  launch_rope(qkv, cos, sin, q, n_rows, heads, kv_heads, head_dim, dtype, stream, "rope_qkv", [&](auto tag) {
    using T = decltype(tag);
    KVDest<T> kv;
    kv.k = reinterpret_cast<T*>(k), kv.v = reinterpret_cast<T*>(v);
    return kv;
  });
}

void rope_qkv_cache(uintptr_t qkv, uintptr_t cos, uintptr_t sin, uintptr_t q, uintptr_t cache, uintptr_t rows,
                    int64_t k_off, int64_t v_off, int64_t n_rows, int heads, int kv_heads, int head_dim, int dtype,
                    uintptr_t stream) {
  launch_rope(qkv, cos, sin, q, n_rows, heads, kv_heads, head_dim, dtype, stream, "rope_qkv_cache", [&](auto tag) {
    using T = decltype(tag);
    KVDest<T> kv;
    kv.cache = reinterpret_cast<T*>(cache), kv.rows = reinterpret_cast<const int64_t*>(rows);
    kv.k_off = k_off, kv.v_off = v_off;
    return kv;
  });
}

}  // namespace kernels
}  // namespace ws
