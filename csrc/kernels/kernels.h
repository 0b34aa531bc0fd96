// The CUDA kernel library of warmserve (issue 13): K/V writes into the engine's paged cache, attention that reads
// K/V straight from the pages, and the block copies switching needs. Device memory and streams cross this
// interface as integers (uintptr_t), so neither torch nor cuda headers are needed to call it: bindings.cpp binds
// it, kernels.cu implements it when the CUDA toolkit is found at build time, kernels_stub.cpp otherwise (every
// call then throws BackendUnavailable).
//
// The cache layout is the engine's (python/warmserve/engine/attention.py): rows of kv_heads * head_dim elements;
// the token at offset t of block b, layer l, K (s=0) or V (s=1) is row b * rows_per_block + (2l + s) * block_tokens
// + t. Kernels take a layer's K and V row offsets (k_off, v_off) and never need the layer count.
#pragma once

#include <cstdint>

namespace ws {
namespace kernels {

// Element type codes (one name per concept: the same codes the Python wrapper passes).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

bool compiled();  // kernels.cu was built into this module
// Devices the CUDA runtime sees (0 without a driver or GPU; never throws).
int device_count();
// Programmatic dependent launch (sm_90 and newer; off by default): the layer kernels of a decode step (write_kv,
// paged_attention, the fused layer kernels, gemv) are launched so that each may start while the one before it
// drains; each waits (griddepcontrol.wait) before it reads what an earlier kernel wrote or writes anything, and
// gemv streams its first weights before that wait. One switch for the process: a CUDA graph bakes in the setting
// it was captured with. set_programmatic_launch returns the previous setting.
bool set_programmatic_launch(bool on);
bool programmatic_launch();

// cache[(rows[i] + k_off) * row_elems ...] = k[i], and likewise v at v_off, for i < n_tokens.
// k, v: [n_tokens, row_elems] contiguous; rows: int64 [n_tokens] on the device (layer-0 K rows); a negative
// row writes nothing (the padding rows of a CUDA graph's batch bucket).
void write_kv(uintptr_t cache, uintptr_t k, uintptr_t v, uintptr_t rows, int64_t n_tokens, int64_t row_elems,
              int64_t k_off, int64_t v_off, int dtype, uintptr_t stream);

struct PagedAttention {
  uintptr_t q = 0;            // [n_rows, n_heads, head_dim] contiguous
  uintptr_t out = 0;          // [n_rows, n_heads, head_dim] contiguous, same dtype
  uintptr_t cache = 0;        // the cache rows (layer 0 of block 0 at row 0)
  uintptr_t block_tables = 0; // int32 [n_seqs, table_stride]: block ids of each sequence, in token order
  int64_t table_stride = 0;   // entries per block-table row
  uintptr_t row_seq = 0;      // int32 [n_rows]: the block-table row of each query row
  uintptr_t row_len = 0;      // int32 [n_rows]: keys 0..len-1 are visible (the query sits at position len-1)
  int64_t n_rows = 0;
  int n_heads = 0, kv_heads = 0, head_dim = 0;
  int64_t rows_per_block = 0;
  int block_tokens = 0;
  int64_t k_off = 0, v_off = 0;  // this layer's K and V row offsets inside a block
  int window = 0;                // sliding window in tokens (0 = none): keys >= len - window only
  float scale = 1.0f;
  int split_tokens = 0;          // keys per split (flash-decoding); n_splits = ceil(max_len / split_tokens)
  int n_splits = 1;
  uintptr_t workspace = 0;       // float32 [n_rows * n_heads * n_splits * (head_dim + 2)] when n_splits > 1
  // int32 [n_rows * n_heads], all zero, or 0. With n_splits > 1 and counters set, the splits merge themselves:
  // a row's only non-empty split writes the output, else the last of its splits to finish (counted here) merges
  // them and sets its count back to zero, so no reduce kernel runs. Kernels sharing a buffer must not overlap.
  uintptr_t counters = 0;
  bool gqa_shared = false;       // one block per KV head computes its query heads (each key read once per group)
  int warps = 0;                 // warps per block of the per-head kernel: 0 = 4; 8 or 16 at head_dim 64 or 128
  int dtype = kFloat32;
  uintptr_t stream = 0;
};
// Decode (one query row per sequence) and prefill chunks with cached context (one query row per token, its
// row_len = its position + 1) are the same computation: each query row attends over its own visible prefix.
void paged_attention(const PagedAttention& a);

// Prefill chunks with cached context, tiled: one thread block per (tile of up to kPrefillTileRows query rows, query
// head) walks the visible keys in tiles staged in shared memory with an online softmax, so a key is read from the
// pages once per tile instead of once per query row. q, out, cache, block_tables, row_seq, row_len as
// PagedAttention (no split); tiles: int32 [n_tiles, 2] = (first query row, rows), the rows of one tile being one
// sequence's consecutive positions (row_len ascending by one). Keys 0..row_len-1 (within the window) are visible.
constexpr int kPrefillTileRows = 16;
void prefill_attention(uintptr_t q, uintptr_t out, uintptr_t cache, uintptr_t block_tables, int64_t table_stride,
                       uintptr_t row_seq, uintptr_t row_len, uintptr_t tiles, int64_t n_tiles, int n_heads,
                       int kv_heads, int head_dim, int64_t rows_per_block, int block_tokens, int64_t k_off,
                       int64_t v_off, int window, float scale, int dtype, uintptr_t stream);

// Copies whole blocks of block_bytes: dst[dst_idx[i]] = src[src_idx[i]] for i < n (int64 indices on the device).
// No dst block may be a src block of another pair (the copies run concurrently).
void copy_blocks(uintptr_t dst, uintptr_t src, uintptr_t src_idx, uintptr_t dst_idx, int64_t n,
                 int64_t block_bytes, uintptr_t stream);
// nbytes from src to dst on the device (a tensor between slots when remapping is not possible).
void copy_bytes(uintptr_t dst, uintptr_t src, int64_t nbytes, uintptr_t stream);

// ---- the small operations of a decoder layer, fused (layer_kernels.cu); every tensor [n_rows, ...] contiguous.
// out = w * rms_norm(h) with h = x, or h = x + res written to h_out when res is not 0 (the residual add before a
// norm). x, res, out, h_out: [n_rows, hidden]; w: [hidden].
void add_rms_norm(uintptr_t x, uintptr_t res, uintptr_t w, uintptr_t out, uintptr_t h_out, int64_t n_rows,
                  int64_t hidden, float eps, int dtype, uintptr_t stream);
// out = silu(gu[:, :inter]) * gu[:, inter:]; gu [n_rows, 2 inter], out [n_rows, inter].
void silu_mul(uintptr_t gu, uintptr_t out, int64_t n_rows, int64_t inter, int dtype, uintptr_t stream);
// qkv [n_rows, (heads + 2 kv_heads) head_dim] -> q [n_rows, heads, head_dim] and k [n_rows, kv_heads, head_dim]
// rotated by cos, sin [n_rows, head_dim] (rotate_half layout), v [n_rows, kv_heads, head_dim] copied.
void rope_qkv(uintptr_t qkv, uintptr_t cos, uintptr_t sin, uintptr_t q, uintptr_t k, uintptr_t v, int64_t n_rows,
              int heads, int kv_heads, int head_dim, int dtype, uintptr_t stream);
// rope_qkv with the rotated keys and the values written straight into a layer's rows of the paged cache, as
// write_kv(cache, k, v, rows, k_off, v_off) would put them (rows int64 [n_rows], layer-0 K rows, negative: nothing
// written; cache rows of kv_heads * head_dim elements): a decode step's rotation and K/V write in one launch.
void rope_qkv_cache(uintptr_t qkv, uintptr_t cos, uintptr_t sin, uintptr_t q, uintptr_t cache, uintptr_t rows,
                    int64_t k_off, int64_t v_off, int64_t n_rows, int heads, int kv_heads, int head_dim, int dtype,
                    uintptr_t stream);

// ---- matrix times a few vectors (gemv_kernels.cu): y[m, n] = sum_k x[m, k] w[n, k] (+ b[n]) for m < n_rows <=
// kGemvMaxRows, as F.linear computes it at decode batch sizes, with no split-K reduce kernel. x [n_rows, k], w [n, k],
// y [n_rows, n] contiguous; b [n] or 0. k * element size a multiple of 16 bytes and x, w 16-byte aligned.
constexpr int kGemvMaxRows = 4;
// in_flight: 16-byte weight vectors each lane keeps in flight, 4 or 8 (gemv_kernels.cu says why 8 may pay).
void gemv(uintptr_t x, uintptr_t w, uintptr_t b, uintptr_t y, int64_t n_rows, int64_t k, int64_t n, int dtype,
          int in_flight, uintptr_t stream);
// gemv with the operation before it done inside (its input never written to memory): one launch fewer. Each block
// computes the input into shared memory (n_rows * k elements, at most kGemvStagedMaxBytes) with the rounding of
// the separate kernel (add_rms_norm, silu_mul), then runs gemv's loop over it.
// gemv_norm: y = (norm_w * rms_norm(h)) w^T (+ b), h = x, or h = x + res written to h_out when res is not 0 (by
// one block; h_out must not overlap x or res). x, res, h_out [n_rows, k]; norm_w [k].
// gemv_silu: y = (silu(gu[:, :k]) * gu[:, k:]) w^T (+ b); gu [n_rows, 2k].
// 47 KB: a block's shared memory above 48 KB needs an opt-in (cudaFuncSetAttribute), kept out of graph captures;
// the norm's partial sums take the rest.
constexpr int64_t kGemvStagedMaxBytes = 47 << 10;
void gemv_norm(uintptr_t x, uintptr_t res, uintptr_t norm_w, uintptr_t h_out, float eps, uintptr_t w, uintptr_t b,
               uintptr_t y, int64_t n_rows, int64_t k, int64_t n, int dtype, int in_flight, uintptr_t stream);
void gemv_silu(uintptr_t gu, uintptr_t w, uintptr_t b, uintptr_t y, int64_t n_rows, int64_t k, int64_t n, int dtype,
               int in_flight, uintptr_t stream);

}  // namespace kernels
}  // namespace ws
