// Attention for prefill chunks with cached context, tiled (kernels.h: prefill_attention). Its own file: it shares
// nothing with the decode kernels of kernels.cu but the element conversions of common.cuh.
#include <cfloat>
#include <cstdint>
#include <string>

#include "common.cuh"
#include "kernels.h"

namespace ws {
namespace kernels {
namespace {

// ---- prefill attention, tiled (kernels.h): grid (n_tiles, n_heads), 128 threads. Shared memory holds the tile's
// queries (scaled, float), one key tile and one value tile (kKeys keys, float; the key rows padded by one element so
// the 32 keys a warp scores sit in 32 different banks) and the tile's scores. Per key tile: stage K and V (coalesced
// along head_dim), score kPrefillTileRows x kKeys pairs, update each row's running max m, sum l and rescale factor c
// (one warp per row), then acc = acc * c + P V, each thread owning kPrefillTileRows * D / 128 outputs. A masked
// score is -FLT_MAX (real scores are finite and far above it).
constexpr int kPrefillThreads = 128;

template <class T, int VPL>
__global__ void __launch_bounds__(kPrefillThreads)
    prefill_attention_kernel(const T* __restrict__ q, T* __restrict__ out, const T* __restrict__ cache,
                             const int32_t* __restrict__ block_tables, int64_t table_stride,
                             const int32_t* __restrict__ row_seq, const int32_t* __restrict__ row_len,
                             const int32_t* __restrict__ tiles, int n_heads, int kv_heads, int64_t rows_per_block,
                             int block_tokens, int64_t k_off, int64_t v_off, int window, float scale) {
  constexpr int D = VPL * 32;
  constexpr int R = kPrefillTileRows;
  constexpr int kKeys = D <= 128 ? 32 : 8;  // keeps the static shared memory under 48 KiB up to D = 256
  constexpr int kPer = R * D / kPrefillThreads;
  __shared__ float sq[R][D];
  __shared__ float sk[kKeys][D + 1];
  __shared__ float sv[kKeys][D];
  __shared__ float ss[R][kKeys];
  __shared__ float sm[R], sl[R], sc[R];
  __shared__ int slen[R];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, h = blockIdx.y;
  const int first = tiles[2 * blockIdx.x], m = min(tiles[2 * blockIdx.x + 1], R);  // rows past R: not computed
  if (m <= 0) return;  // an empty tile (uniform over the block)
  const int kvh = h / (n_heads / kv_heads);
  const int64_t row_elems = int64_t(kv_heads) * D;
  const int32_t* table = block_tables + int64_t(row_seq[first]) * table_stride;
  if (tid < R) {
    slen[tid] = tid < m ? row_len[first + tid] : 0;
    sm[tid] = -FLT_MAX, sl[tid] = 0.f, sc[tid] = 1.f;
  }
  for (int e = tid; e < R * D; e += kPrefillThreads) {
    const int i = e / D, d = e % D;
    sq[i][d] = i < m ? to_f(q[(int64_t(first + i) * n_heads + h) * D + d]) * scale : 0.f;
  }
  __syncthreads();
  const int hi = slen[m - 1];  // the tile's last row sees the most keys
  const int lo = window > 0 ? max(0, slen[0] - window) : 0;
  float acc[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) acc[k] = 0.f;

  for (int t0 = lo; t0 < hi; t0 += kKeys) {
    for (int e = tid; e < kKeys * D; e += kPrefillThreads) {
      const int j = e / D, d = e % D, t = t0 + j;
      float kx = 0.f, vx = 0.f;
      if (t < hi) {
        const int64_t r = int64_t(table[t / block_tokens]) * rows_per_block + t % block_tokens;
        kx = to_f(cache[(r + k_off) * row_elems + int64_t(kvh) * D + d]);
        vx = to_f(cache[(r + v_off) * row_elems + int64_t(kvh) * D + d]);
      }
      sk[j][d] = kx;
      sv[j][d] = vx;
    }
    __syncthreads();
    for (int e = tid; e < R * kKeys; e += kPrefillThreads) {
      const int i = e / kKeys, j = e % kKeys, t = t0 + j, len = slen[i];
      float s = -FLT_MAX;
      if (i < m && t < len && (window <= 0 || t >= len - window)) {
        s = 0.f;
#pragma unroll 8
        for (int d = 0; d < D; ++d) s += sq[i][d] * sk[j][d];
      }
      ss[i][j] = s;
    }
    __syncthreads();
    for (int i = warp; i < R; i += kPrefillThreads / 32) {
      const float s = lane < kKeys ? ss[i][lane] : -FLT_MAX;
      float mx = s;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_old = sm[i], m_new = fmaxf(m_old, mx);
      const float p = s > -FLT_MAX ? __expf(s - m_new) : 0.f;
      float sum = p;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (lane < kKeys) ss[i][lane] = p;
      if (lane == 0) {
        const float c = __expf(m_old - m_new);  // 1 while no key was seen (both -FLT_MAX); l is 0 then anyway
        sc[i] = c, sl[i] = sl[i] * c + sum, sm[i] = m_new;
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int e = tid + k * kPrefillThreads, i = e / D, d = e % D;
      float x = acc[k] * sc[i];
#pragma unroll 8
      for (int j = 0; j < kKeys; ++j) x += ss[i][j] * sv[j][d];
      acc[k] = x;
    }
    __syncthreads();  // the next key tile overwrites sk, sv and ss
  }
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int e = tid + k * kPrefillThreads, i = e / D, d = e % D;
    if (i < m) {
      const float l = sl[i];
      out[(int64_t(first + i) * n_heads + h) * D + d] = from_f<T>(l > 0.f ? acc[k] / l : 0.f);
    }
  }
}

template <class T>
void launch_prefill(uintptr_t q, uintptr_t out, uintptr_t cache, uintptr_t block_tables, int64_t table_stride,
                    uintptr_t row_seq, uintptr_t row_len, uintptr_t tiles, int64_t n_tiles, int n_heads, int kv_heads,
                    int head_dim, int64_t rows_per_block, int block_tokens, int64_t k_off, int64_t v_off, int window,
                    float scale, cudaStream_t st) {
  const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(n_heads));
  switch (head_dim / 32) {
#define WS_CASE(v)                                                                                                  \
  case v:                                                                                                          \
    prefill_attention_kernel<T, v><<<grid, kPrefillThreads, 0, st>>>(                                              \
        reinterpret_cast<const T*>(q), reinterpret_cast<T*>(out), reinterpret_cast<const T*>(cache),               \
        reinterpret_cast<const int32_t*>(block_tables), table_stride, reinterpret_cast<const int32_t*>(row_seq),   \
        reinterpret_cast<const int32_t*>(row_len), reinterpret_cast<const int32_t*>(tiles), n_heads, kv_heads,     \
        rows_per_block, block_tokens, k_off, v_off, window, scale);                                                \
    break;
    WS_CASE(1) WS_CASE(2) WS_CASE(3) WS_CASE(4) WS_CASE(5) WS_CASE(6) WS_CASE(7) WS_CASE(8)
#undef WS_CASE
    default: throw invalid("prefill_attention: head_dim must be a multiple of 32 in [32, 256], got " +
                           std::to_string(head_dim));
  }
  check_launch("prefill_attention_kernel launch");
}

}  // namespace

void prefill_attention(uintptr_t q, uintptr_t out, uintptr_t cache, uintptr_t block_tables, int64_t table_stride,
                       uintptr_t row_seq, uintptr_t row_len, uintptr_t tiles, int64_t n_tiles, int n_heads,
                       int kv_heads, int head_dim, int64_t rows_per_block, int block_tokens, int64_t k_off,
                       int64_t v_off, int window, float scale, int dtype, uintptr_t stream) {
  if (n_tiles <= 0) return;
  // paged_attention's checks (kernels.cu), for a direct caller of the binding: a head_dim that is no multiple of 32
  // picks the kernel of a smaller one (a wrong answer, no error), and the kernel divides by n_heads / kv_heads and
  // reads KV head h / (n_heads / kv_heads) of a row, so a bad grouping divides by zero or reads past the row; it
  // finds a key's block as t / block_tokens, so block_tokens 0 divides by zero.
  if (head_dim % 32 != 0 || head_dim < 32 || head_dim > 256)
    throw invalid("prefill_attention: head_dim must be a multiple of 32 in [32, 256], got " +
                  std::to_string(head_dim) + ". Fix: pad the heads to a supported size or use the torch path");
  if (kv_heads <= 0 || n_heads % kv_heads != 0)
    throw invalid("prefill_attention: " + std::to_string(n_heads) + " query heads are no multiple of " +
                  std::to_string(kv_heads) + " KV heads. Fix: pass kv_heads = cache row elements / head_dim, a "
                  "divisor of n_heads");
  if (block_tokens <= 0)
    throw invalid("prefill_attention: block_tokens must be >= 1, got " + std::to_string(block_tokens) +
                  ". Fix: pass the cache's tokens per block (KVCache.block_tokens)");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
#define WS_ARGS q, out, cache, block_tables, table_stride, row_seq, row_len, tiles, n_tiles, n_heads, kv_heads, head_dim, \
                rows_per_block, block_tokens, k_off, v_off, window, scale, st
    case kFloat32: launch_prefill<float>(WS_ARGS); break;
    case kFloat16: launch_prefill<__half>(WS_ARGS); break;
    case kBFloat16: launch_prefill<__nv_bfloat16>(WS_ARGS); break;
#undef WS_ARGS
    default:
      throw invalid("prefill_attention: unknown dtype code " + std::to_string(dtype) + ". Fix: pass 0 (float32), 1 "
                    "(float16) or 2 (bfloat16)");
  }
}

}  // namespace kernels
}  // namespace ws
