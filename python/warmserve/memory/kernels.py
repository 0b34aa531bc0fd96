"""The CUDA kernels of csrc/kernels (issue 13), on torch tensors.

``kernels_available()`` says whether they can run here: the module was built with nvcc *and* a GPU is visible.
Each function checks its tensors (CUDA, one device, contiguous, dtypes) and launches on torch's current stream of
that device; without kernels it raises BackendUnavailableError saying why and how to get them. The torch path in
engine/attention.py stays the CPU implementation and the reference that tests/gpu/test_kernels.py compares to.

The cache is the engine's row view (engine/attention.py): ``cache[rows, kv_heads * head_dim]``; the token at
offset t of block b, layer l, K (s=0) or V (s=1) is row ``b * rows_per_block + (2l + s) * block_tokens + t``;
``k_off``/``v_off`` are a layer's K and V row offsets inside a block (KVCache.layer_offsets).

Attention kernels take one query row per (sequence, position): ``row_seq[i]`` is the block-table row of query i,
``row_len[i]`` its number of visible keys (its position + 1); a decode step has one row per sequence
(``decode_attention``), a prefill chunk with cached context one row per chunk token (``prefill_rows`` builds the
two vectors; ``prefill_attention`` computes such chunks tiled, 16 query rows per thread block, so each key is read
once per tile, not once per row). The context is split into ``split_tokens`` pieces combined by a second kernel
(flash-decoding) or by the splits themselves (``merge_in_kernel``), so one long sequence still spreads over the
GPU. For CUDA-graph capture pass ``split_tokens`` and ``max_len`` explicitly: the default derives the split from
``max_len``, and computing that from ``row_len`` syncs.

CUDA graphs of the decode step (issue 13, item 2) capture these kernels: engine/graphs.py passes ``split_tokens``
and ``max_len`` fixed per batch bucket, and its padding rows carry write row -1, which ``write_kv`` skips.
"""

from __future__ import annotations

import math

import torch

from warmserve import _C
from warmserve.errors import BackendUnavailableError, InvalidArgumentError

_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: Query rows x heads x splits the default split aims at: eight 128-thread blocks on each of an H100's (and
#: H200's) 132 SMs. At two per SM a 32k-token decode kept too few loads in flight (150 GB/s on an H200, 2026-11-28).
_TARGET_BLOCKS = 1056
#: Smallest default split (keys): below this a split's fixed cost outweighs the parallelism it adds.
_MIN_SPLIT_TOKENS = 256


def kernels_compiled() -> bool:
    """Whether this build of warmserve contains the CUDA kernels (nvcc was found when it was built)."""
    return bool(_C.kernels_compiled())


def kernels_available() -> bool:
    """Whether the kernels can run here: compiled in, torch built with CUDA, and a GPU visible."""
    return kernels_compiled() and torch.cuda.is_available() and _C.kernels_device_count() > 0


def programmatic_launch() -> bool:
    """Whether the decode step's kernels are launched with programmatic dependent launch (set_programmatic_launch)."""
    return bool(_C.kernel_programmatic_launch())


def set_programmatic_launch(on: bool) -> bool:
    """Launch write_kv, paged_attention, the fused layer kernels and gemv with programmatic dependent launch (PDL),
    so each may start while the kernel before it drains and gemv streams its first weights before waiting for its
    input (csrc/kernels/common.cuh says what a kernel may do before the wait). Process-wide; a CUDA graph keeps the
    setting it was captured with, so capture again after a change (engine/graphs.py release_decode_graphs).
    Needs compute capability 9.0 (Hopper) or newer on every visible GPU. Returns the previous setting."""
    if not isinstance(on, bool):
        raise InvalidArgumentError(f"on must be True or False, got {on!r}", on=repr(on))
    if on:
        if not kernels_available():
            raise BackendUnavailableError("programmatic dependent launch needs the CUDA kernels and a GPU. Fix: run "
                                          "on a GPU machine with a build that found nvcc")
        old = [i for i in range(torch.cuda.device_count()) if torch.cuda.get_device_capability(i) < (9, 0)]
        if old:
            raise BackendUnavailableError(
                f"programmatic dependent launch needs compute capability 9.0 or newer; GPUs {old} are older. Fix: "
                "leave it off there (the default)", devices=old)
    return bool(_C.kernel_set_programmatic_launch(on))


#: paged_attention's default for merge_in_kernel (set_merge_in_kernel changes it, for side-by-side benchmarks).
#: On since an H200 ran it (2026-12-04): tests/gpu/test_split_merge_and_pdl.py passed and bench/gpu_graphs.py part 9
#: timed the 1b's graphed decode 1.04x faster than with the reduce kernel at batch 1 and at batch 16.
_MERGE_IN_KERNEL = True


def set_merge_in_kernel(on: bool) -> bool:
    """paged_attention's default for merge_in_kernel; returns the previous one. A CUDA graph keeps what it was
    captured with."""
    global _MERGE_IN_KERNEL
    if not isinstance(on, bool):
        raise InvalidArgumentError(f"on must be True or False, got {on!r}", on=repr(on))
    old, _MERGE_IN_KERNEL = _MERGE_IN_KERNEL, on
    return old


def _require(*tensors: torch.Tensor) -> torch.device:
    if not kernels_compiled():
        raise BackendUnavailableError(
            "this build of warmserve has no CUDA kernels: nvcc was not found when it was built. Fix: install the "
            "CUDA toolkit (nvcc on PATH) and reinstall warmserve, or use the torch path (engine/attention.py)")
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"the CUDA kernels need a GPU and a CUDA build of torch; torch {torch.__version__} sees none. Fix: run "
            "on a GPU machine, or use the torch path (engine/attention.py)", torch_version=torch.__version__)
    dev = tensors[0].device
    for t in tensors:
        if t.device.type != "cuda" or t.device != dev:
            raise InvalidArgumentError(f"kernel arguments must all be on one CUDA device; got {t.device} and {dev}",
                                       device=str(t.device))
        if not t.is_contiguous():
            raise InvalidArgumentError(f"kernel arguments must be contiguous; got a tensor of shape "
                                       f"{tuple(t.shape)} with strides {t.stride()}", shape=tuple(t.shape))
    return dev


def _dtype_code(t: torch.Tensor) -> int:
    code = _DTYPES.get(t.dtype)
    if code is None:
        raise InvalidArgumentError(f"kernels take float32, float16 or bfloat16, not {t.dtype}", dtype=str(t.dtype))
    return code


def _index(t: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    if t.dtype != dtype or t.dim() != 1:
        raise InvalidArgumentError(f"{name} must be a 1-D {dtype} tensor, got {t.dtype} of shape {tuple(t.shape)}",
                                   name=name)


def _stream(dev: torch.device) -> int:
    return torch.cuda.current_stream(dev).cuda_stream


def write_kv(cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, write_rows: torch.Tensor, k_off: int,
             v_off: int) -> None:
    """cache[write_rows + k_off] = k and cache[write_rows + v_off] = v (the rows of one layer's K and V).
    cache [rows, kv_heads*head_dim]; k, v [N, kv_heads, head_dim] (or [N, kv_heads*head_dim]); write_rows int64 [N]
    (layer-0 K rows, as AttnMeta.write_rows); a negative row writes nothing (a CUDA graph's padding rows). Rows
    are not bounds-checked on the device: they come from the engine's block tables."""
    dev = _require(cache, k, v, write_rows)
    _index(write_rows, torch.int64, "write_rows")
    n = write_rows.shape[0]
    row = cache.shape[1]
    if k.dtype != cache.dtype or v.dtype != cache.dtype or k.numel() != n * row or v.numel() != n * row:
        raise InvalidArgumentError(f"k and v must be {n} rows of {row} {cache.dtype} elements, got k "
                                   f"{tuple(k.shape)} {k.dtype}, v {tuple(v.shape)} {v.dtype}", rows=n)
    with torch.cuda.device(dev):
        _C.kernel_write_kv(cache.data_ptr(), k.data_ptr(), v.data_ptr(), write_rows.data_ptr(), n, row, int(k_off),
                           int(v_off), _dtype_code(cache), _stream(dev))


#: splits of one attention call at most: they are the launch grid's z dimension, which CUDA caps at 65535
MAX_SPLITS = 65535


def default_split_tokens(n_rows: int, n_heads: int, max_len: int) -> int:
    """Keys per split: enough splits that rows x heads x splits fills the GPU, none shorter than 256 keys."""
    want = max(1, math.ceil(_TARGET_BLOCKS / max(1, n_rows * n_heads)))
    splits = max(1, min(want, math.ceil(max_len / _MIN_SPLIT_TOKENS)))
    return max(1, math.ceil(max_len / splits))


def gqa_shared_built(n_heads: int, kv_heads: int, head_dim: int) -> bool:
    """Whether paged_attention(gqa_shared=True) has a kernel for this shape (csrc/kernels/kernels.cu launch_gqa:
    groups of 2, 4 or 8 query heads per KV head at head_dim 64 or 128); other shapes take the per-head kernel."""
    return kv_heads > 0 and n_heads % kv_heads == 0 and n_heads // kv_heads in (2, 4, 8) and head_dim in (64, 128)


def uses_gqa_shared(n_rows: int, n_heads: int, kv_heads: int, head_dim: int, gqa_shared: bool | None = None) -> bool:
    """Whether paged_attention runs the GQA-shared kernel: where built for the shape, and by default (None) for
    2+ query rows; True: for any rows; False: never. A single row has too few blocks to share at short contexts:
    the 1b demo's batch-1 decode took 14 us a layer with it against 8.4 us with the per-head kernel on an H200
    (bench/gpu_graphs.py part 5, 2026-11-28). Beyond 4k tokens it wins at batch 1 too (0.96-0.85x the time,
    bench/gpu_kernels.py), but a CUDA graph's bucket of 1 does not know its context, so the rule is by rows."""
    if gqa_shared is False or not gqa_shared_built(n_heads, kv_heads, head_dim):
        return False
    return gqa_shared is True or n_rows >= 2


def split_heads(n_rows: int, n_heads: int, kv_heads: int, head_dim: int, gqa_shared: bool | None = None) -> int:
    """The heads the attention grid has one block each for (default_split_tokens' n_heads): the KV heads where
    the GQA-shared kernel runs, else the query heads."""
    return kv_heads if uses_gqa_shared(n_rows, n_heads, kv_heads, head_dim, gqa_shared) else n_heads


def _attention_shapes(q, cache, block_tables, row_seq, row_len) -> tuple[int, int, int]:
    """(rows, query heads, head size) of an attention call, after checking the shapes both kernels need."""
    if q.dim() != 3 or cache.dim() != 2 or block_tables.dim() != 2 or block_tables.dtype != torch.int32:
        raise InvalidArgumentError(f"expected q [N, H, D], cache [rows, kv_heads*D], block_tables int32 [S, B]; got "
                                   f"{tuple(q.shape)}, {tuple(cache.shape)}, {tuple(block_tables.shape)} "
                                   f"{block_tables.dtype}")
    n_rows, n_heads, head_dim = q.shape
    if head_dim % 32 or not 32 <= head_dim <= 256:
        raise InvalidArgumentError(f"head_dim must be a multiple of 32 in [32, 256], got {head_dim}",
                                   head_dim=head_dim)
    if cache.shape[1] % head_dim or n_heads % (cache.shape[1] // head_dim) or q.dtype != cache.dtype:
        raise InvalidArgumentError(f"cache rows of {cache.shape[1]} {cache.dtype} elements do not hold whole "
                                   f"{head_dim}-element heads dividing {n_heads} {q.dtype} query heads")
    if row_seq.shape[0] != n_rows or row_len.shape[0] != n_rows:
        raise InvalidArgumentError(f"row_seq and row_len must have {n_rows} entries, got {row_seq.shape[0]} and "
                                   f"{row_len.shape[0]}", rows=n_rows)
    return n_rows, n_heads, head_dim


def _check_geometry(call: str, *, k_off: int, v_off: int, rows_per_block: int, block_tokens: int) -> None:
    """Refuses a block geometry the kernels would address past a block with (they find key t of a layer at row
    table[t // block_tokens] * rows_per_block + off + t % block_tokens, unchecked on the device). Plain integers:
    it runs before any CUDA call, so misuse is the same typed error with or without a GPU."""
    if block_tokens < 1:
        raise InvalidArgumentError(f"{call}: block_tokens must be >= 1, got {block_tokens}. Fix: pass the cache's "
                                   "tokens per block (KVCache.block_tokens)", block_tokens=block_tokens)
    for name, off in (("k_off", k_off), ("v_off", v_off)):
        if off < 0 or off + block_tokens > rows_per_block:
            raise InvalidArgumentError(
                f"{call}: {name} {off} + block_tokens {block_tokens} must lie in a block of {rows_per_block} rows. "
                "Fix: pass the layer's offsets from KVCache.layer_offsets and the cache's rows_per_block",
                **{name: off}, block_tokens=block_tokens, rows_per_block=rows_per_block)


def paged_attention(q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor, row_seq: torch.Tensor,
                    row_len: torch.Tensor, *, k_off: int, v_off: int, rows_per_block: int, block_tokens: int,
                    scale: float, window: int = 0, max_len: int | None = None,
                    split_tokens: int | None = None, gqa_shared: bool | None = None,
                    warps: int | None = None, merge_in_kernel: bool | None = None,
                    split_counters: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of query rows q [N, H, D] over the paged cache; returns [N, H, D] in q's dtype.
    block_tables int32 [S, max_blocks]; row_seq int32 [N] (block-table row of each query); row_len int32 [N]
    (keys 0..len-1 visible, len >= 1); window: sliding window in tokens (0 = none). GQA: H a multiple of the
    cache's kv_heads = cache.shape[1] // D. head_dim must be a multiple of 32, at most 256. gqa_shared: one thread
    block per KV head computes its group's query heads, reading each key once per group (gqa_shared_built's
    shapes; others take the per-head kernel); None: for 2+ rows (uses_gqa_shared). On an H200 at 32/8 heads x 128
    in bfloat16 it took 0.56-0.85x the per-head kernel's time at batch 16 and 64 (bench/gpu_kernels.py,
    2026-11-28), hence the default. warps: of the per-head kernel's block, 4, or 8 or 16 at head_dim 64 and 128:
    more keys in flight per round, for short contexts with few blocks (ignored where the GQA-shared kernel runs).
    None: 8 where built (head_dim 64 and 128), else 4: on an H200, 8 warps took 0.70-0.90x the time of 4 in every
    case bench/gpu_kernels.py timed (batch 1 and 4, 70 to 2,000 tokens, eager and graph splits; 2026-12-04).
    merge_in_kernel: with more than one split, the splits merge themselves (a row's one used split writes its
    output, else the last split to finish merges the row's), instead of a reduce kernel after the attention
    kernel: one launch fewer a layer. A CUDA graph fixes the split count for its longest context (32 splits for a
    batch-1 graph of the 1b demo), so at short contexts most rows have one used split. None: the module default
    (set_merge_in_kernel; on unless changed). split_counters: the int32 buffer it counts finished splits
    in, at least N x H entries, all zero (each call leaves it so); calls that may run at the same time need their
    own. None: a zeroed one is made for the call (a memset); a CUDA graph passes its own (engine/graphs.py)."""
    _check_geometry("paged_attention", k_off=k_off, v_off=v_off, rows_per_block=rows_per_block,
                    block_tokens=block_tokens)
    dev = _require(q, cache, block_tables, row_seq, row_len)
    _index(row_seq, torch.int32, "row_seq")
    _index(row_len, torch.int32, "row_len")
    n_rows, n_heads, head_dim = _attention_shapes(q, cache, block_tables, row_seq, row_len)
    kv_heads = cache.shape[1] // head_dim
    if warps not in (None, 4) and not (warps in (8, 16) and head_dim in (64, 128)):
        raise InvalidArgumentError(f"warps must be 4, or 8 or 16 at head_dim 64 or 128; got {warps} at head_dim "
                                   f"{head_dim}", warps=warps, head_dim=head_dim)
    if warps is None:
        warps = 8 if head_dim in (64, 128) else 4
    out = torch.empty_like(q)
    if n_rows == 0:
        return out
    if max_len is None:
        max_len = int(row_len.max().item())  # a device sync: pass max_len on hot paths and under graph capture
        # Here max_len is the longest row's visible keys, so checking it is free. A max_len passed in is only the
        # split's bound (a CUDA graph fixes it beyond its tables, engine/graphs.py), so it is not checked.
        if max_len > block_tables.shape[1] * block_tokens:
            raise InvalidArgumentError(
                f"paged_attention: a row sees {max_len} keys but block tables of {block_tables.shape[1]} blocks of "
                f"{block_tokens} tokens hold {block_tables.shape[1] * block_tokens}. Fix: widen block_tables to "
                f"{math.ceil(max_len / block_tokens)} blocks", max_len=max_len, table_width=block_tables.shape[1])
    gqa_shared = uses_gqa_shared(n_rows, n_heads, kv_heads, head_dim, gqa_shared)
    if split_tokens is None:  # the GQA-shared kernel has one block per KV head: it wants more splits
        split_tokens = default_split_tokens(n_rows, split_heads(n_rows, n_heads, kv_heads, head_dim, gqa_shared),
                                            max_len)
    if split_tokens < 1:
        raise InvalidArgumentError(f"split_tokens must be >= 1, got {split_tokens}", split_tokens=split_tokens)
    n_splits = max(1, math.ceil(max_len / split_tokens))
    if n_splits > MAX_SPLITS:
        raise InvalidArgumentError(
            f"{n_splits} splits of {split_tokens} tokens over max_len {max_len} exceed the grid's {MAX_SPLITS}: "
            f"pass split_tokens >= {math.ceil(max_len / MAX_SPLITS)}", split_tokens=split_tokens, max_len=max_len)
    work = counters = None
    if n_splits > 1:
        work = torch.empty(n_rows * n_heads * n_splits * (head_dim + 2), dtype=torch.float32, device=dev)
        if _MERGE_IN_KERNEL if merge_in_kernel is None else merge_in_kernel:
            counters = split_counters
            if counters is None:
                counters = torch.zeros(n_rows * n_heads, dtype=torch.int32, device=dev)
            elif (counters.dtype != torch.int32 or counters.device != dev or not counters.is_contiguous()
                  or counters.numel() < n_rows * n_heads):
                raise InvalidArgumentError(
                    f"split_counters must be a contiguous int32 tensor of at least {n_rows * n_heads} entries on "
                    f"{dev}, got {counters.dtype} of {counters.numel()} on {counters.device}",
                    entries=counters.numel(), need=n_rows * n_heads)
    with torch.cuda.device(dev):
        _C.kernel_paged_attention(
            q.data_ptr(), out.data_ptr(), cache.data_ptr(), block_tables.data_ptr(), block_tables.shape[1],
            row_seq.data_ptr(), row_len.data_ptr(), n_rows, n_heads, kv_heads, head_dim, int(rows_per_block),
            int(block_tokens), int(k_off), int(v_off), int(window), float(scale), int(split_tokens), n_splits,
            0 if work is None else work.data_ptr(), _dtype_code(q), _stream(dev), bool(gqa_shared), int(warps or 0),
            0 if counters is None else counters.data_ptr())
    return out


def decode_attention(q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                     **kw) -> torch.Tensor:
    """One decode row per sequence: q [B, H, D], block_tables int32 [B, max_blocks], context_lens int32 [B]
    (tokens in the cache, this step's included). Keyword arguments as paged_attention."""
    row_seq = torch.arange(q.shape[0], dtype=torch.int32, device=q.device)
    return paged_attention(q, cache, block_tables, row_seq, context_lens, **kw)


def prefill_rows(chunks: list[tuple[int, int, int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_seq, row_len) for prefill chunks given as (block-table row, start, n): the chunk's tokens sit at
    positions start..start+n-1 of their sequence, its K/V already written (write_kv) before the attention."""
    seq, lens = [], []
    for s, start, n in chunks:
        seq += [s] * n
        lens += range(start + 1, start + n + 1)
    return (torch.tensor(seq, dtype=torch.int32).to(device), torch.tensor(lens, dtype=torch.int32).to(device))


#: Query rows per tile of prefill_attention (kPrefillTileRows in csrc/kernels/kernels.h).
PREFILL_TILE_ROWS = 16


def prefill_tiles(chunks, device) -> torch.Tensor:
    """int32 [n_tiles, 2] (first row, rows) for prefill_attention: each chunk (first row, n), n rows of one sequence
    at consecutive positions, cut into tiles of at most PREFILL_TILE_ROWS rows."""
    tiles = [(r + i, min(PREFILL_TILE_ROWS, n - i)) for r, n in chunks for i in range(0, n, PREFILL_TILE_ROWS)]
    return torch.tensor(tiles or [[0, 0]], dtype=torch.int32)[:len(tiles)].to(device)


def prefill_attention(q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor, row_seq: torch.Tensor,
                      row_len: torch.Tensor, tiles: torch.Tensor, *, k_off: int, v_off: int, rows_per_block: int,
                      block_tokens: int, scale: float, window: int = 0) -> torch.Tensor:
    """Attention of prefill rows over the paged cache, tiled (kernels.h prefill_attention): q [N, H, D] as
    paged_attention, with tiles int32 [n_tiles, 2] from prefill_tiles (every row in exactly one tile, a tile's
    rows one sequence's consecutive positions; not checked on the device). Returns [N, H, D]; rows in no tile
    are left uninitialised. The K/V of the chunk must already be written (write_kv)."""
    _check_geometry("prefill_attention", k_off=k_off, v_off=v_off, rows_per_block=rows_per_block,
                    block_tokens=block_tokens)
    dev = _require(q, cache, block_tables, row_seq, row_len, tiles)
    _index(row_seq, torch.int32, "row_seq")
    _index(row_len, torch.int32, "row_len")
    if tiles.dtype != torch.int32 or tiles.dim() != 2 or tiles.shape[1] != 2:
        raise InvalidArgumentError(f"tiles must be int32 [n_tiles, 2], got {tiles.dtype} {tuple(tiles.shape)}")
    n_rows, n_heads, head_dim = _attention_shapes(q, cache, block_tables, row_seq, row_len)
    out = torch.empty_like(q)
    with torch.cuda.device(dev):
        _C.kernel_prefill_attention(
            q.data_ptr(), out.data_ptr(), cache.data_ptr(), block_tables.data_ptr(), block_tables.shape[1],
            row_seq.data_ptr(), row_len.data_ptr(), tiles.data_ptr(), tiles.shape[0], n_heads,
            cache.shape[1] // head_dim, head_dim, int(rows_per_block), int(block_tokens), int(k_off), int(v_off),
            int(window), float(scale), _dtype_code(q), _stream(dev))
    return out


def copy_blocks(dst: torch.Tensor, src: torch.Tensor, src_blocks, dst_blocks) -> None:
    """dst[dst_blocks[i]] = src[src_blocks[i]] for whole blocks (dim 0 of dst and src, equal block sizes): the
    copies that compact or relocate KV blocks, within one region (dst is src) or between two. Blocks are
    int64 tensors or lists; no destination block may also be a source block (the copies run concurrently),
    which is checked when the blocks are lists."""
    if isinstance(src_blocks, (list, tuple)) or isinstance(dst_blocks, (list, tuple)):
        srcs, dsts = list(map(int, src_blocks)), list(map(int, dst_blocks))
        if len(srcs) != len(dsts):
            raise InvalidArgumentError(f"{len(srcs)} source blocks for {len(dsts)} destinations")
        if dst.data_ptr() == src.data_ptr() and set(srcs) & set(dsts):
            raise InvalidArgumentError("a destination block is also a source block: split the copy into rounds",
                                       blocks=sorted(set(srcs) & set(dsts))[:8])
        for name, ids, t in (("source", srcs, src), ("destination", dsts, dst)):
            if ids and not 0 <= min(ids) <= max(ids) < t.shape[0]:
                raise InvalidArgumentError(f"{name} block out of range [0, {t.shape[0]})", blocks=t.shape[0])
        src_blocks = torch.tensor(srcs, dtype=torch.int64).to(src.device)
        dst_blocks = torch.tensor(dsts, dtype=torch.int64).to(dst.device)
    dev = _require(dst, src, src_blocks, dst_blocks)
    _index(src_blocks, torch.int64, "src_blocks")
    _index(dst_blocks, torch.int64, "dst_blocks")
    block_bytes = dst[0].numel() * dst.element_size() if dst.shape[0] else 0
    if src.shape[0] and src[0].numel() * src.element_size() != block_bytes:
        raise InvalidArgumentError(f"source and destination blocks differ in size "
                                   f"({src[0].numel() * src.element_size()} and {block_bytes} bytes)")
    if src_blocks.shape[0] != dst_blocks.shape[0]:
        raise InvalidArgumentError(f"{src_blocks.shape[0]} source blocks for {dst_blocks.shape[0]} destinations")
    with torch.cuda.device(dev):
        _C.kernel_copy_blocks(dst.data_ptr(), src.data_ptr(), src_blocks.data_ptr(), dst_blocks.data_ptr(),
                              src_blocks.shape[0], block_bytes, _stream(dev))


def copy_bytes(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copies src's bytes into dst (same byte size, e.g. a tensor between two slots) on the current stream."""
    dev = _require(dst, src)
    n = src.numel() * src.element_size()
    if dst.numel() * dst.element_size() != n:
        raise InvalidArgumentError(f"copy_bytes needs equal sizes, got {dst.numel() * dst.element_size()} and {n} "
                                   "bytes")
    with torch.cuda.device(dev):
        _C.kernel_copy_bytes(dst.data_ptr(), src.data_ptr(), n, _stream(dev))


# ---- the small operations of a decoder layer, fused (csrc/kernels/layer_kernels.cu). Each rounds to the model's
# dtype where the torch ops it replaces do (engine/model.py), so Model.fused_kernels changes the launches, not the
# arithmetic beyond the order of the norm's float32 sum.

def add_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float,
                 res: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(w * rms_norm(h), h) for h = x, or h = x + res (the residual add before a norm, one launch for both).
    x, res [N, hidden]; w [hidden]."""
    dev = _require(x, w, *([res] if res is not None else []))
    n, hidden = x.shape
    if w.shape != (hidden,) or w.dtype != x.dtype or (res is not None and (res.shape != x.shape
                                                                           or res.dtype != x.dtype)):
        raise InvalidArgumentError(f"add_rms_norm needs w [{hidden}] and res {tuple(x.shape)} of {x.dtype}; got w "
                                   f"{tuple(w.shape)} {w.dtype}" + ("" if res is None else f", res {tuple(res.shape)}"
                                                                     f" {res.dtype}"))
    out = torch.empty_like(x)
    h = x if res is None else torch.empty_like(x)
    with torch.cuda.device(dev):
        _C.kernel_add_rms_norm(x.data_ptr(), 0 if res is None else res.data_ptr(), w.data_ptr(), out.data_ptr(),
                               0 if res is None else h.data_ptr(), n, hidden, float(eps), _dtype_code(x), _stream(dev))
    return out, h


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """silu(g) * u for g, u = gu.chunk(2, -1): gu [N, 2 inter] -> [N, inter]."""
    dev = _require(gu)
    n, two = gu.shape
    if two % 2:
        raise InvalidArgumentError(f"silu_mul needs an even last dimension, got {two}", shape=tuple(gu.shape))
    out = torch.empty(n, two // 2, dtype=gu.dtype, device=gu.device)
    with torch.cuda.device(dev):
        _C.kernel_silu_mul(gu.data_ptr(), out.data_ptr(), n, two // 2, _dtype_code(gu), _stream(dev))
    return out


def _check_rope(what: str, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                head_dim: int) -> int:
    """qkv's rows, once qkv, cos and sin have rope_qkv's shapes and one dtype."""
    n = qkv.shape[0]
    if (qkv.shape[1] != (heads + 2 * kv_heads) * head_dim or cos.numel() != n * head_dim
            or sin.numel() != n * head_dim or not cos.dtype == sin.dtype == qkv.dtype):
        raise InvalidArgumentError(f"{what} needs qkv [{n}, {(heads + 2 * kv_heads) * head_dim}] and cos/sin of "
                                   f"{n * head_dim} {qkv.dtype} elements; got {tuple(qkv.shape)}, "
                                   f"{tuple(cos.shape)} {cos.dtype}, {tuple(sin.shape)} {sin.dtype}")
    return n


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
             head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k rotated (engine/rope.py apply_rope) and v, each contiguous [N, heads or kv_heads, head_dim], from
    qkv [N, (heads + 2 kv_heads) head_dim]; cos, sin [N, 1, head_dim] (Rope.cos_sin)."""
    dev = _require(qkv, cos, sin)
    n = _check_rope("rope_qkv", qkv, cos, sin, heads, kv_heads, head_dim)
    q = torch.empty(n, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    k = torch.empty(n, kv_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    v = torch.empty_like(k)
    with torch.cuda.device(dev):
        _C.kernel_rope_qkv(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                           n, heads, kv_heads, head_dim, _dtype_code(qkv), _stream(dev))
    return q, k, v


def rope_qkv_to_cache(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                      head_dim: int, cache: torch.Tensor, write_rows: torch.Tensor, k_off: int,
                      v_off: int) -> torch.Tensor:
    """rope_qkv then write_kv(cache, k, v, write_rows, k_off, v_off) in one launch: returns q [N, heads, head_dim];
    the rotated keys and the values go straight to the layer's cache rows (a negative row writes nothing). cache
    [rows, kv_heads * head_dim]; write_rows int64 [N], not bounds-checked on the device (write_kv)."""
    dev = _require(qkv, cos, sin, cache, write_rows)
    _index(write_rows, torch.int64, "write_rows")
    n = _check_rope("rope_qkv_to_cache", qkv, cos, sin, heads, kv_heads, head_dim)
    if (cache.dtype != qkv.dtype or cache.dim() != 2 or cache.shape[1] != kv_heads * head_dim
            or write_rows.shape[0] != n):
        raise InvalidArgumentError(
            f"rope_qkv_to_cache needs cache rows of {kv_heads * head_dim} {qkv.dtype} elements and {n} write rows; "
            f"got cache {tuple(cache.shape)} {cache.dtype}, rows {tuple(write_rows.shape)}. Fix: rope_qkv, then "
            "write_kv", rows=n)
    q = torch.empty(n, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    with torch.cuda.device(dev):
        _C.kernel_rope_qkv_cache(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), q.data_ptr(), cache.data_ptr(),
                                 write_rows.data_ptr(), int(k_off), int(v_off), n, heads, kv_heads, head_dim,
                                 _dtype_code(qkv), _stream(dev))
    return q


# ---- matrix times a few vectors (csrc/kernels/gemv_kernels.cu): F.linear at decode batch sizes, no split-K reduce.
#: Most rows gemv takes (the kernel is built for 1 to this many).
GEMV_MAX_ROWS = 4
#: 16-byte weight vectors each lane of gemv (and its staged forms) keeps in flight: 4, or 8 (set_gemv_in_flight).
#: 4 as first measured; 8 halves a small matrix's round trips to memory (csrc/kernels/gemv_kernels.cu), written
#: without a GPU (2026-12-04) for bench/gpu_graphs.py part 13 to time.
_GEMV_IN_FLIGHT = 4


def set_gemv_in_flight(n: int) -> int:
    """gemv's weight vectors in flight per lane, 4 or 8; returns the previous setting. Process-wide; a CUDA graph
    keeps what it was captured with."""
    global _GEMV_IN_FLIGHT
    if type(n) is not int or n not in (4, 8):
        raise InvalidArgumentError(f"gemv's vectors in flight must be 4 or 8, got {n!r}", n=repr(n))
    old, _GEMV_IN_FLIGHT = _GEMV_IN_FLIGHT, n
    return old


def gemv_usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether gemv(x, w) runs here: x [1..GEMV_MAX_ROWS, k] and w [n, k] contiguous on one GPU in one float dtype,
    rows of whole 16-byte vectors, 16-byte aligned. No device sync; cheap enough for every matmul of a step."""
    return (x.is_cuda and x.dim() == 2 and w.dim() == 2 and 1 <= x.shape[0] <= GEMV_MAX_ROWS
            and x.shape[1] == w.shape[1] and x.dtype == w.dtype and x.dtype in _DTYPES and x.device == w.device
            and x.is_contiguous() and w.is_contiguous() and (x.shape[1] * x.element_size()) % 16 == 0
            and x.data_ptr() % 16 == 0 and w.data_ptr() % 16 == 0 and kernels_compiled())


def gemv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, w, b) for x of 1 to GEMV_MAX_ROWS rows, one kernel (gemv_usable says where it runs): [rows, n]
    in x's dtype, float32 accumulation."""
    dev = _require(x, w, *(() if b is None else (b,)))
    if not gemv_usable(x, w) or (b is not None and (b.shape != (w.shape[0],) or b.dtype != w.dtype)):
        raise InvalidArgumentError(
            f"gemv needs x [1..{GEMV_MAX_ROWS}, k], w [n, k] and b [n] of one dtype, rows of whole 16-byte vectors; "
            f"got x {tuple(x.shape)} {x.dtype}, w {tuple(w.shape)} {w.dtype}, b "
            f"{None if b is None else (tuple(b.shape), b.dtype)}. Fix: use F.linear", x_shape=tuple(x.shape))
    y = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype, device=x.device)
    with torch.cuda.device(dev):
        _C.kernel_gemv(x.data_ptr(), w.data_ptr(), 0 if b is None else b.data_ptr(), y.data_ptr(), x.shape[0],
                       x.shape[1], w.shape[0], _dtype_code(x), _GEMV_IN_FLIGHT, _stream(dev))
    return y


# gemv with the kernel before it taken in (csrc/kernels/gemv_kernels.cu gemv_norm, gemv_silu): each block computes
# the matmul's input into shared memory, rounded as add_rms_norm and silu_mul round it, so a decode step launches
# one kernel fewer per norm and per activation. Model.gemv_prologues uses them.

def gemv_staged_usable(inp: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether gemv_norm or gemv_silu runs for its input ``inp`` (x [M, k] for gemv_norm, gu [M, 2k] for
    gemv_silu) and weights w [n, k]: 1 to GEMV_MAX_ROWS rows, one float dtype, contiguous, on one GPU, rows of w
    whole 16-byte vectors 16-byte aligned, and M x k elements within the kernel's shared memory
    (KERNEL_GEMV_STAGED_MAX_BYTES). No device sync."""
    if not (inp.dim() == 2 and w.dim() == 2 and inp.shape[1] in (w.shape[1], 2 * w.shape[1])):
        return False
    k, esize = w.shape[1], inp.element_size()
    return (inp.is_cuda and 1 <= inp.shape[0] <= GEMV_MAX_ROWS and inp.dtype == w.dtype and inp.dtype in _DTYPES
            and inp.device == w.device and inp.is_contiguous() and w.is_contiguous() and (k * esize) % 16 == 0
            and w.data_ptr() % 16 == 0 and inp.shape[0] * k * esize <= _C.KERNEL_GEMV_STAGED_MAX_BYTES
            and kernels_compiled())


def _staged_checks(what: str, inp: torch.Tensor, width: int, w: torch.Tensor, b: torch.Tensor | None,
                   *more: torch.Tensor) -> torch.device:
    dev = _require(inp, w, *(() if b is None else (b,)), *more)
    if (not gemv_staged_usable(inp, w) or inp.shape[1] != width
            or (b is not None and (b.shape != (w.shape[0],) or b.dtype != w.dtype))
            or any(t.dtype != w.dtype or not t.is_contiguous() for t in more)):
        raise InvalidArgumentError(
            f"{what} needs an input of 1..{GEMV_MAX_ROWS} rows of {width} elements (the matmul's input at most "
            f"{_C.KERNEL_GEMV_STAGED_MAX_BYTES} bytes in all), w [n, k] and b [n] of one dtype, contiguous, rows of "
            f"whole 16-byte vectors; got input {tuple(inp.shape)} {inp.dtype}, w {tuple(w.shape)} {w.dtype}. Fix: "
            "run the norm or silu_mul, then gemv or F.linear", input_shape=tuple(inp.shape))
    return dev


def gemv_norm(x: torch.Tensor, norm_w: torch.Tensor, eps: float, w: torch.Tensor, b: torch.Tensor | None = None,
              res: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(F.linear(n, w, b), h) with (n, h) = add_rms_norm(x, norm_w, eps, res), in one kernel: x, res [M, k],
    norm_w [k], w [n, k] (gemv_staged_usable(x, w) says where it runs)."""
    dev = _staged_checks("gemv_norm", x, w.shape[-1], w, b, norm_w, *(() if res is None else (res,)))
    if norm_w.shape != (x.shape[1],) or (res is not None and res.shape != x.shape):
        raise InvalidArgumentError(f"gemv_norm needs norm_w [{x.shape[1]}] and res {tuple(x.shape)}; got norm_w "
                                   f"{tuple(norm_w.shape)}" + ("" if res is None else f", res {tuple(res.shape)}"))
    y = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype, device=x.device)
    h = x if res is None else torch.empty_like(x)
    with torch.cuda.device(dev):
        _C.kernel_gemv_norm(x.data_ptr(), 0 if res is None else res.data_ptr(), norm_w.data_ptr(),
                            0 if res is None else h.data_ptr(), float(eps), w.data_ptr(),
                            0 if b is None else b.data_ptr(), y.data_ptr(), x.shape[0], x.shape[1], w.shape[0],
                            _dtype_code(x), _GEMV_IN_FLIGHT, _stream(dev))
    return y, h


def gemv_silu(gu: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(silu_mul(gu), w, b) in one kernel: gu [M, 2k], w [n, k] (gemv_staged_usable(gu, w) says where it
    runs)."""
    dev = _staged_checks("gemv_silu", gu, 2 * w.shape[-1], w, b)
    y = torch.empty(gu.shape[0], w.shape[0], dtype=gu.dtype, device=gu.device)
    with torch.cuda.device(dev):
        _C.kernel_gemv_silu(gu.data_ptr(), w.data_ptr(), 0 if b is None else b.data_ptr(), y.data_ptr(), gu.shape[0],
                            w.shape[1], w.shape[0], _dtype_code(gu), _GEMV_IN_FLIGHT, _stream(dev))
    return y
