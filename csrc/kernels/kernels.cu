// CUDA implementation of kernels.h. Launched through the CUDA runtime (linked statically: cudart_static opens
// libcuda only on the first runtime call, so the module still imports on machines without a driver), on the
// caller's stream, on the calling thread's current device (torch's, since the Python wrapper passes torch
// tensors' pointers and torch's current stream). Every launch checks cudaGetLastError and throws ws::Error.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cstdint>
#include <string>
#include <type_traits>

#include "../errors.h"
#include "common.cuh"
#include "kernels.h"

namespace ws {
namespace kernels {
namespace {

// ---- write_kv: one thread block per token, K and V (gridDim.y = 2); copies in 16-byte units when rows allow.
// A negative row is skipped: the padding rows of a CUDA graph's batch bucket (engine/graphs.py) write nothing.
template <class U>
__global__ void write_rows_kernel(U* __restrict__ cache, const U* __restrict__ k, const U* __restrict__ v,
                                  const int64_t* __restrict__ rows, int64_t units, int64_t k_off, int64_t v_off) {
  pdl_wait();
  pdl_trigger();
  const int64_t i = blockIdx.x;
  const int64_t row = rows[i];
  if (row < 0) return;
  const bool is_v = blockIdx.y == 1;
  const U* src = (is_v ? v : k) + i * units;
  U* dst = cache + (row + (is_v ? v_off : k_off)) * units;
  for (int64_t j = threadIdx.x; j < units; j += blockDim.x) dst[j] = src[j];
}

// ---- paged attention: grid (n_rows, n_heads, n_splits), W warps (kWarps by default; PagedAttention.warps); each
// warp walks kKeys keys at a time (keys t = lo + kKeys (warp + W i) + j) with an online softmax (running max m,
// sum l, accumulator acc).
// Lanes split head_dim into contiguous runs of VPL elements, read with the widest aligned vector loads, so one key
// row is one coalesced read. The kKeys keys' loads are issued together and their dot products reduced together:
// with one key at a time a warp waits out a load, a 5-step shuffle and an exp per key, and a 32k-token decode ran
// at 150 GB/s on an H200 (bench/gpu_kernels.py, 2026-11-28). Then the warps are merged in shared memory. With one
// split the block writes the normalised output; else it writes (acc, m, l) to the workspace and
// reduce_splits_kernel merges the splits (flash-decoding).
constexpr int kWarps = 4;
constexpr int kKeys = 4;

// n consecutive elements at p (p aligned to the largest power of two dividing n * sizeof(T), up to 16 bytes) as
// float, through vector loads of that width.
template <class T, int N>
__device__ __forceinline__ void load_run(const T* __restrict__ p, float (&out)[N]) {
  constexpr int bytes = N * int(sizeof(T));
  constexpr int w = bytes % 16 == 0 ? 16 : bytes % 8 == 0 ? 8 : bytes % 4 == 0 ? 4 : int(sizeof(T));
  constexpr int per = w / int(sizeof(T));  // elements per load
  using V = typename std::conditional<w == 16, int4,
            typename std::conditional<w == 8, int2, typename std::conditional<w == 4, int, T>::type>::type>::type;
#pragma unroll
  for (int i = 0; i < N / per; ++i) {
    V v = reinterpret_cast<const V*>(p)[i];
    const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int k = 0; k < per; ++k) out[i * per + k] = to_f(e[k]);
  }
}

// The keys one split of one query row attends over, [lo, hi) (empty past the row's end or before its window),
// and its sequence's block table.
struct KeyRange {
  const int32_t* table;
  int lo, hi;
};
__device__ __forceinline__ KeyRange key_range(const PagedAttention& a, int row, int split) {
  const int len = reinterpret_cast<const int32_t*>(a.row_len)[row];
  const int seq = reinterpret_cast<const int32_t*>(a.row_seq)[row];
  KeyRange r{reinterpret_cast<const int32_t*>(a.block_tables) + int64_t(seq) * a.table_stride,
             split * a.split_tokens, 0};
  r.hi = min(len, r.lo + a.split_tokens);
  if (a.window > 0) r.lo = max(r.lo, len - a.window);
  return r;
}
// The splits of a row whose key_range is not empty, [first, last): those before it end at or before the window's
// start, those after it start at or past the row's end. reduce_splits_kernel reads these alone: a CUDA graph fixes
// the split count for its longest context (a batch-1 graph of the 1b demo: 32 splits of 256 over 8,192 tokens), so
// a short row's reduce otherwise walked 31 empty splits (4.5 us a call, 72 us of a 1b batch-1 step on an H200,
// 2026-12-04).
struct SplitSpan {
  int first, last;
};
__device__ __forceinline__ SplitSpan used_splits(const PagedAttention& a, int row) {
  const int len = max(0, reinterpret_cast<const int32_t*>(a.row_len)[row]);
  const int st = a.split_tokens;
  const int first = a.window > 0 ? max(0, len - a.window) / st : 0;
  return SplitSpan{first, min(a.n_splits, int((int64_t(len) + st - 1) / st))};
}

// The merge of a row and head's used splits from the workspace, for output elements d0, d0 + step, ...:
// out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M). __ldcg: the partials were written by other blocks of
// this kernel (merge_in_kernel) and must not come from this SM's L1.
template <class T>
__device__ void merge_splits(const PagedAttention& a, int64_t rh, SplitSpan used, int d0, int step) {
  const int D = a.head_dim;
  const float* ws = reinterpret_cast<const float*>(a.workspace) + rh * a.n_splits * (D + 2);
  float M = -FLT_MAX;
  for (int s = used.first; s < used.last; ++s)
    if (__ldcg(ws + s * (D + 2) + D + 1) > 0.f) M = fmaxf(M, __ldcg(ws + s * (D + 2) + D));
  for (int d = d0; d < D; d += step) {
    float L = 0.f, x = 0.f;
    for (int s = used.first; s < used.last; ++s) {
      const float* p = ws + s * (D + 2);
      const float l = __ldcg(p + D + 1);
      if (l <= 0.f) continue;  // a split past the sequence's end (or before its window)
      const float w = __expf(__ldcg(p + D) - M);
      L += l * w;
      x += __ldcg(p + d) * w;
    }
    reinterpret_cast<T*>(a.out)[rh * D + d] = from_f<T>(L > 0.f ? x / L : 0.f);
  }
}

// PagedAttention.counters: called by every thread of a block that wrote its split's partial for the row and
// heads counted at `counter`; true in the block that finished last of the row's `expected` used splits, which
// then merges them. The fence makes each thread's partial visible device-wide before its block counts (the
// threadFenceReduction pattern of the CUDA samples); the last block resets the count for the next launch.
__device__ bool last_split(int* counter, int expected) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, 1) == expected - 1;
    if (last) atomicExch(counter, 0);
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

template <class T, int VPL, int W>  // VPL = head_dim / 32 values per lane; W warps (PagedAttention.warps)
__global__ void __launch_bounds__(W * 32)
    paged_attention_kernel(PagedAttention a) {
  pdl_wait();  // row_len, row_seq and q come from the kernels before this one
  pdl_trigger();
  const int row = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int D = VPL * 32;
  const int group = a.n_heads / a.kv_heads;
  const int kvh = h / group;
  const int64_t row_elems = int64_t(a.kv_heads) * D;
  const KeyRange kr = key_range(a, row, split);
  const int32_t* table = kr.table;
  const int lo = kr.lo, hi = kr.hi;
  const T* cache = reinterpret_cast<const T*>(a.cache);
  const int64_t rh = int64_t(row) * a.n_heads + h;
  const SplitSpan used = used_splits(a, row);
  // With counters, a row's one used split writes the output itself (merged = true), and a row with none (len 0)
  // gets zeros from its split 0, as the reduce kernel gives it.
  const bool merged = a.n_splits == 1 || (a.counters && used.last - used.first <= 1);
  if (lo >= hi && a.n_splits > 1) {
    // A split past the sequence's end (CUDA graphs fix the split count for the longest context, so most splits
    // of a short sequence are empty): mark it empty (l = 0) for reduce_splits_kernel and skip the rest (with
    // counters no merge reads it). The branch is uniform over the block, so no thread waits at __syncthreads.
    if (a.counters) {
      if (used.last <= used.first && split == 0)
        for (int d = threadIdx.x; d < D; d += blockDim.x) reinterpret_cast<T*>(a.out)[rh * D + d] = from_f<T>(0.f);
      return;
    }
    if (threadIdx.x == 0) {
      float* ws = reinterpret_cast<float*>(a.workspace) + (rh * a.n_splits + split) * (D + 2);
      ws[D] = -FLT_MAX, ws[D + 1] = 0.f;
    }
    return;
  }

  float q[VPL], acc[VPL];
  load_run<T, VPL>(reinterpret_cast<const T*>(a.q) + rh * D + lane * VPL, q);
#pragma unroll
  for (int i = 0; i < VPL; ++i) q[i] *= a.scale, acc[i] = 0.f;
  float m = -FLT_MAX, l = 0.f;  // -FLT_MAX, not -inf: exp(m - m_new) stays finite when a warp sees no key
  for (int base = lo + warp * kKeys; base < hi; base += W * kKeys) {
    float kv[kKeys][VPL], vv[kKeys][VPL], s[kKeys];
#pragma unroll
    for (int j = 0; j < kKeys; ++j) {
      const int t = min(base + j, hi - 1);  // a key past hi loads key hi - 1 again and is masked below
      const int64_t blk = table[t / a.block_tokens];
      const int64_t r = blk * a.rows_per_block + (t % a.block_tokens);
      const int64_t off = int64_t(kvh) * D + lane * VPL;
      load_run<T, VPL>(cache + (r + a.k_off) * row_elems + off, kv[j]);
      load_run<T, VPL>(cache + (r + a.v_off) * row_elems + off, vv[j]);
    }
#pragma unroll
    for (int j = 0; j < kKeys; ++j) {
      s[j] = 0.f;
#pragma unroll
      for (int i = 0; i < VPL; ++i) s[j] += q[i] * kv[j][i];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
      for (int j = 0; j < kKeys; ++j) s[j] += __shfl_xor_sync(0xffffffffu, s[j], o);
    float m_new = m;
#pragma unroll
    for (int j = 0; j < kKeys; ++j)
      if (base + j < hi) m_new = fmaxf(m_new, s[j]);
    const float c = __expf(m - m_new);
    l *= c;
#pragma unroll
    for (int i = 0; i < VPL; ++i) acc[i] *= c;
#pragma unroll
    for (int j = 0; j < kKeys; ++j) {
      const float p = base + j < hi ? __expf(s[j] - m_new) : 0.f;
      l += p;
#pragma unroll
      for (int i = 0; i < VPL; ++i) acc[i] += p * vv[j][i];
    }
    m = m_new;
  }

  __shared__ float sm_m[W], sm_l[W];
  __shared__ float sm_acc[W][VPL * 32];
  if (lane == 0) sm_m[warp] = m, sm_l[warp] = l;
#pragma unroll
  for (int i = 0; i < VPL; ++i) sm_acc[warp][lane * VPL + i] = acc[i];
  __syncthreads();
  float M = -FLT_MAX;
  for (int w = 0; w < W; ++w) M = fmaxf(M, sm_m[w]);
  float L = 0.f, wgt[W];
  for (int w = 0; w < W; ++w) {
    wgt[w] = sm_l[w] > 0.f ? __expf(sm_m[w] - M) : 0.f;  // a warp with no key has l == 0
    L += sm_l[w] * wgt[w];
  }
  if (merged) {
    T* op = reinterpret_cast<T*>(a.out) + rh * D;
    const float inv = L > 0.f ? 1.f / L : 0.f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      float x = 0.f;
      for (int w = 0; w < W; ++w) x += sm_acc[w][d] * wgt[w];
      op[d] = from_f<T>(x * inv);
    }
    return;
  }
  float* ws = reinterpret_cast<float*>(a.workspace) + (rh * a.n_splits + split) * (D + 2);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float x = 0.f;
    for (int w = 0; w < W; ++w) x += sm_acc[w][d] * wgt[w];
    ws[d] = x;
  }
  if (threadIdx.x == 0) ws[D] = M, ws[D + 1] = L;
  if (a.counters && last_split(reinterpret_cast<int*>(a.counters) + rh, used.last - used.first))
    merge_splits<T>(a, rh, used, threadIdx.x, blockDim.x);
}

// ---- paged attention, GQA-shared (PagedAttention.gqa_shared): grid (n_rows, kv_heads, n_splits); the block of a
// KV head computes all G = n_heads / kv_heads query heads of its group, so each key and value row is read once per
// group instead of once per query head. Otherwise as paged_attention_kernel (same key order per warp, same split
// workspace layout, so reduce_splits_kernel merges either). Built for G in {2, 4, 8} and head_dim 64 or 128; other
// shapes take paged_attention_kernel. tests/gpu/test_kernels.py checks it (passed on an H200, 2026-11-28, where it
// took 0.56-0.85x the per-head kernel's time at batch 16 and 64: kernels.uses_gqa_shared says when it runs).
template <class T, int VPL, int G>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_gqa_kernel(PagedAttention a) {
  constexpr int kK = G >= 8 ? 2 : kKeys;  // keys per warp step: fewer with 8 heads, to stay in registers
  pdl_wait();
  pdl_trigger();
  const int row = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int D = VPL * 32;
  const int64_t row_elems = int64_t(a.kv_heads) * D;
  const KeyRange kr = key_range(a, row, split);
  const int32_t* table = kr.table;
  const int lo = kr.lo, hi = kr.hi;
  const T* cache = reinterpret_cast<const T*>(a.cache);
  const int64_t rh0 = int64_t(row) * a.n_heads + int64_t(kvh) * G;  // the group's first query head
  const SplitSpan used = used_splits(a, row);
  const bool merged = a.n_splits == 1 || (a.counters && used.last - used.first <= 1);  // as paged_attention_kernel
  if (lo >= hi && a.n_splits > 1) {  // an empty split (see paged_attention_kernel): uniform over the block
    if (a.counters) {
      if (used.last <= used.first && split == 0)
        for (int i = threadIdx.x; i < G * D; i += blockDim.x)
          reinterpret_cast<T*>(a.out)[rh0 * D + i] = from_f<T>(0.f);
      return;
    }
    if (threadIdx.x < G) {
      float* ws = reinterpret_cast<float*>(a.workspace) + ((rh0 + threadIdx.x) * a.n_splits + split) * (D + 2);
      ws[D] = -FLT_MAX, ws[D + 1] = 0.f;
    }
    return;
  }
  float q[G][VPL], acc[G][VPL], m[G], l[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    load_run<T, VPL>(reinterpret_cast<const T*>(a.q) + (rh0 + g) * D + lane * VPL, q[g]);
#pragma unroll
    for (int i = 0; i < VPL; ++i) q[g][i] *= a.scale, acc[g][i] = 0.f;
    m[g] = -FLT_MAX, l[g] = 0.f;
  }
  for (int base = lo + warp * kK; base < hi; base += kWarps * kK) {
    float kv[kK][VPL], vv[kK][VPL];
#pragma unroll
    for (int j = 0; j < kK; ++j) {
      const int t = min(base + j, hi - 1);  // a key past hi loads key hi - 1 again and is masked below
      const int64_t r = int64_t(table[t / a.block_tokens]) * a.rows_per_block + (t % a.block_tokens);
      const int64_t off = int64_t(kvh) * D + lane * VPL;
      load_run<T, VPL>(cache + (r + a.k_off) * row_elems + off, kv[j]);
      load_run<T, VPL>(cache + (r + a.v_off) * row_elems + off, vv[j]);
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float s[kK];
#pragma unroll
      for (int j = 0; j < kK; ++j) {
        s[j] = 0.f;
#pragma unroll
        for (int i = 0; i < VPL; ++i) s[j] += q[g][i] * kv[j][i];
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int j = 0; j < kK; ++j) s[j] += __shfl_xor_sync(0xffffffffu, s[j], o);
      float m_new = m[g];
#pragma unroll
      for (int j = 0; j < kK; ++j)
        if (base + j < hi) m_new = fmaxf(m_new, s[j]);
      const float c = __expf(m[g] - m_new);
      l[g] *= c;
#pragma unroll
      for (int i = 0; i < VPL; ++i) acc[g][i] *= c;
#pragma unroll
      for (int j = 0; j < kK; ++j) {
        const float p = base + j < hi ? __expf(s[j] - m_new) : 0.f;
        l[g] += p;
#pragma unroll
        for (int i = 0; i < VPL; ++i) acc[g][i] += p * vv[j][i];
      }
      m[g] = m_new;
    }
  }

  __shared__ float sm_m[kWarps][G], sm_l[kWarps][G];
  __shared__ float sm_acc[kWarps][G][VPL * 32];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) sm_m[warp][g] = m[g], sm_l[warp][g] = l[g];
#pragma unroll
    for (int i = 0; i < VPL; ++i) sm_acc[warp][g][lane * VPL + i] = acc[g][i];
  }
  __syncthreads();
  for (int g = 0; g < G; ++g) {
    float M = -FLT_MAX;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w][g]);
    float L = 0.f, wgt[kWarps];
    for (int w = 0; w < kWarps; ++w) {
      wgt[w] = sm_l[w][g] > 0.f ? __expf(sm_m[w][g] - M) : 0.f;  // a warp with no key has l == 0
      L += sm_l[w][g] * wgt[w];
    }
    const int64_t rh = rh0 + g;
    if (merged) {
      T* op = reinterpret_cast<T*>(a.out) + rh * D;
      const float inv = L > 0.f ? 1.f / L : 0.f;
      for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float x = 0.f;
        for (int w = 0; w < kWarps; ++w) x += sm_acc[w][g][d] * wgt[w];
        op[d] = from_f<T>(x * inv);
      }
      continue;
    }
    float* ws = reinterpret_cast<float*>(a.workspace) + (rh * a.n_splits + split) * (D + 2);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      float x = 0.f;
      for (int w = 0; w < kWarps; ++w) x += sm_acc[w][g][d] * wgt[w];
      ws[d] = x;
    }
    if (threadIdx.x == 0) ws[D] = M, ws[D + 1] = L;
  }
  // One count per group (at its first head): the last split of the group merges all G heads.
  if (!merged && a.counters && last_split(reinterpret_cast<int*>(a.counters) + rh0, used.last - used.first))
    for (int g = 0; g < G; ++g) merge_splits<T>(a, rh0 + g, used, threadIdx.x, blockDim.x);
}

// Launches the GQA-shared kernel when it is built for this shape; false: the caller takes paged_attention_kernel.
template <class T>
bool launch_gqa(const PagedAttention& a, cudaStream_t st) {
  const int group = a.n_heads / a.kv_heads, vpl = a.head_dim / 32;
  const dim3 grid(unsigned(a.n_rows), unsigned(a.kv_heads), unsigned(a.n_splits));
#define WS_GQA(v, g)                                                                 \
  if (vpl == v && group == g) {                                                      \
    launch(paged_attention_gqa_kernel<T, v, g>, grid, dim3(kWarps * 32), st,         \
           "paged_attention_gqa_kernel launch", a);                                  \
    return true;                                                                     \
  }
  WS_GQA(2, 2) WS_GQA(2, 4) WS_GQA(2, 8) WS_GQA(4, 2) WS_GQA(4, 4) WS_GQA(4, 8)
#undef WS_GQA
  return false;
}

// grid (n_rows, n_heads), head_dim threads: out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
template <class T>
__global__ void reduce_splits_kernel(PagedAttention a) {
  pdl_wait();
  pdl_trigger();
  merge_splits<T>(a, int64_t(blockIdx.x) * a.n_heads + blockIdx.y, used_splits(a, blockIdx.x), threadIdx.x,
                  blockDim.x);
}

template <class T>
void launch_reduce(const PagedAttention& a, cudaStream_t st) {
  if (a.n_splits <= 1 || a.counters) return;  // with counters the attention kernel merged the splits
  launch(reduce_splits_kernel<T>, dim3(unsigned(a.n_rows), unsigned(a.n_heads)), dim3(unsigned(a.head_dim)), st,
         "reduce_splits_kernel launch", a);
}

template <class T>
void launch_attention(const PagedAttention& a) {
  dim3 grid(unsigned(a.n_rows), unsigned(a.n_heads), unsigned(a.n_splits));
  cudaStream_t st = reinterpret_cast<cudaStream_t>(a.stream);
  if (!a.gqa_shared || !launch_gqa<T>(a, st)) {
    const int w = a.warps ? a.warps : kWarps;
    const int vpl = a.head_dim / 32;
    // More warps put more keys in flight per round: a short context is a chain of dependent rounds (a 70-token
    // batch-1 decode took 8.4 us a layer with 4 warps on an H200, bench/gpu_graphs.py part 5). Built for head_dim
    // 64 and 128; kernels.py checks the shape first.
#define WS_WIDE(v, n)                                                              \
  if (vpl == v && w == n) {                                                        \
    launch(paged_attention_kernel<T, v, n>, grid, dim3(n * 32), st,                \
           "paged_attention_kernel launch", a);                                    \
    launch_reduce<T>(a, st);                                                       \
    return;                                                                        \
  }
    WS_WIDE(2, 8) WS_WIDE(2, 16) WS_WIDE(4, 8) WS_WIDE(4, 16)
#undef WS_WIDE
    if (w != kWarps) throw invalid("paged_attention: " + std::to_string(w) + " warps are built for head_dim 64 and "
                                   "128 only, got head_dim " + std::to_string(a.head_dim));
    switch (vpl) {
#define WS_CASE(v)                                                                                 \
  case v:                                                                                          \
    launch(paged_attention_kernel<T, v, kWarps>, grid, dim3(kWarps * 32), st, "paged_attention_kernel launch", \
           a);                                                                                     \
    break;
      WS_CASE(1) WS_CASE(2) WS_CASE(3) WS_CASE(4) WS_CASE(5) WS_CASE(6) WS_CASE(7) WS_CASE(8)
#undef WS_CASE
      default: throw invalid("paged_attention: no kernel for head_dim " + std::to_string(a.head_dim));
    }
  }
  launch_reduce<T>(a, st);
}

__global__ void copy_blocks_kernel(int4* __restrict__ dst, const int4* __restrict__ src,
                                   const int64_t* __restrict__ src_idx, const int64_t* __restrict__ dst_idx,
                                   int64_t n_pairs, int64_t units) {
  for (int64_t p = blockIdx.y; p < n_pairs; p += gridDim.y) {  // gridDim.y is at most 65535
    const int4* s = src + src_idx[p] * units;
    int4* d = dst + dst_idx[p] * units;
    for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < units; j += int64_t(gridDim.x) * blockDim.x)
      d[j] = s[j];
  }
}

__global__ void copy_blocks_bytes_kernel(uint8_t* __restrict__ dst, const uint8_t* __restrict__ src,
                                         const int64_t* __restrict__ src_idx, const int64_t* __restrict__ dst_idx,
                                         int64_t n_pairs, int64_t n) {
  for (int64_t p = blockIdx.y; p < n_pairs; p += gridDim.y) {
    const uint8_t* s = src + src_idx[p] * n;
    uint8_t* d = dst + dst_idx[p] * n;
    for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x)
      d[j] = s[j];
  }
}

}  // namespace

bool compiled() { return true; }

namespace {
// Read on every launch from any thread, written rarely: an atomic, so no lock (and no GIL) is involved.
std::atomic<bool> g_programmatic_launch{false};
}  // namespace
bool set_programmatic_launch(bool on) { return g_programmatic_launch.exchange(on); }
bool programmatic_launch() { return g_programmatic_launch.load(std::memory_order_relaxed); }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" status so later calls report their own errors
    return 0;
  }
  return n;
}

void write_kv(uintptr_t cache, uintptr_t k, uintptr_t v, uintptr_t rows, int64_t n_tokens, int64_t row_elems,
              int64_t k_off, int64_t v_off, int dtype, uintptr_t stream) {
  if (n_tokens <= 0) return;
  // The element size decides how many bytes a row has; an unknown code would copy 2-byte rows of the wrong length.
  if (dtype != kFloat32 && dtype != kFloat16 && dtype != kBFloat16)
    throw invalid("write_kv: unknown dtype code " + std::to_string(dtype) + ". Fix: pass 0 (float32), 1 (float16) "
                  "or 2 (bfloat16)");
  const int64_t esize = dtype == kFloat32 ? 4 : 2;
  const int64_t row_bytes = row_elems * esize;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  dim3 grid(unsigned(n_tokens), 2);
  const bool aligned16 = row_bytes % 16 == 0 && (cache | k | v) % 16 == 0;
  if (aligned16)
    launch(write_rows_kernel<int4>, grid, dim3(128), st, "write_kv launch", reinterpret_cast<int4*>(cache),
           reinterpret_cast<const int4*>(k), reinterpret_cast<const int4*>(v), reinterpret_cast<const int64_t*>(rows),
           row_bytes / 16, k_off, v_off);
  else
    launch(write_rows_kernel<uint16_t>, grid, dim3(128), st, "write_kv launch", reinterpret_cast<uint16_t*>(cache),
           reinterpret_cast<const uint16_t*>(k), reinterpret_cast<const uint16_t*>(v),
           reinterpret_cast<const int64_t*>(rows), row_bytes / 2, k_off, v_off);
}

void paged_attention(const PagedAttention& a) {
  if (a.n_rows <= 0) return;
  // kernels.py checks these too; a direct caller of the binding must not get a silent wrong answer instead: a
  // head_dim that is no multiple of 32 picks the kernel of a smaller one, split_tokens 0 makes every split empty,
  // the grid's z (splits) is capped at 65535, and a bad head grouping or block_tokens 0 divides by zero.
  if (a.head_dim % 32 != 0 || a.head_dim < 32 || a.head_dim > 256)
    throw invalid("paged_attention: head_dim must be a multiple of 32 in [32, 256], got " +
                  std::to_string(a.head_dim) + ". Fix: pad the heads to a supported size or use the torch path");
  if (a.kv_heads <= 0 || a.n_heads % a.kv_heads != 0)
    throw invalid("paged_attention: " + std::to_string(a.n_heads) + " query heads are no multiple of " +
                  std::to_string(a.kv_heads) + " KV heads. Fix: pass kv_heads = cache row elements / head_dim, a "
                  "divisor of n_heads");
  if (a.block_tokens <= 0)
    throw invalid("paged_attention: block_tokens must be >= 1, got " + std::to_string(a.block_tokens) +
                  ". Fix: pass the cache's tokens per block (KVCache.block_tokens)");
  if (a.split_tokens <= 0 || a.n_splits < 1 || a.n_splits > 65535)
    throw invalid("paged_attention: need split_tokens > 0 and 1 <= n_splits <= 65535, got " +
                  std::to_string(a.split_tokens) + " and " + std::to_string(a.n_splits) +
                  ". Fix: pass n_splits = ceil(max_len / split_tokens), raising split_tokens past 65535 splits");
  switch (a.dtype) {
    case kFloat32: launch_attention<float>(a); break;
    case kFloat16: launch_attention<__half>(a); break;
    case kBFloat16: launch_attention<__nv_bfloat16>(a); break;
    default:
      throw invalid("paged_attention: unknown dtype code " + std::to_string(a.dtype) + ". Fix: pass 0 (float32), 1 "
                    "(float16) or 2 (bfloat16)");
  }
}

void copy_blocks(uintptr_t dst, uintptr_t src, uintptr_t src_idx, uintptr_t dst_idx, int64_t n,
                 int64_t block_bytes, uintptr_t stream) {
  if (n <= 0 || block_bytes <= 0) return;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  // Enough blocks along x to keep every SM busy on a few pairs (2 MiB / (256 threads * 16 B) = 512 at most).
  const unsigned gy = unsigned(std::min<int64_t>(n, 65535));
  if (block_bytes % 16 == 0 && (dst | src) % 16 == 0) {
    const int64_t units = block_bytes / 16;
    const unsigned gx = unsigned(std::min<int64_t>((units + 255) / 256, 512));
    copy_blocks_kernel<<<dim3(gx, gy), 256, 0, st>>>(
        reinterpret_cast<int4*>(dst), reinterpret_cast<const int4*>(src), reinterpret_cast<const int64_t*>(src_idx),
        reinterpret_cast<const int64_t*>(dst_idx), n, units);
  } else {
    const unsigned gx = unsigned(std::min<int64_t>((block_bytes + 255) / 256, 512));
    copy_blocks_bytes_kernel<<<dim3(gx, gy), 256, 0, st>>>(
        reinterpret_cast<uint8_t*>(dst), reinterpret_cast<const uint8_t*>(src),
        reinterpret_cast<const int64_t*>(src_idx), reinterpret_cast<const int64_t*>(dst_idx), n, block_bytes);
  }
  check_launch("copy_blocks launch");
}

void copy_bytes(uintptr_t dst, uintptr_t src, int64_t nbytes, uintptr_t stream) {
  if (nbytes <= 0) return;
  // The copy engine path: cudaMemcpyAsync device-to-device runs at HBM speed without occupying SMs.
  check(cudaMemcpyAsync(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), size_t(nbytes),
                        cudaMemcpyDeviceToDevice, reinterpret_cast<cudaStream_t>(stream)),
        "cudaMemcpyAsync");
}

}  // namespace kernels
}  // namespace ws
