"""Memory geometry every part of warmserve agrees on: pages, KV blocks, and the bytes they take.

Pure arithmetic, no torch: the engine maps weights and KV blocks with these numbers, the policy and the simulator
plan with them, and the controller accounts pages with them, so one model's footprint is the same number
everywhere. Sizes are bytes; a size that is mapped is rounded up to whole pages, the way the engine maps it.
"""

from __future__ import annotations

import math

#: Physical page of the memory manager's pool (csrc) by default, and the unit KV blocks are padded to: every
#: mapping is a whole number of these. A pool may use larger pages (a multiple of this); KV blocks then share them
#: (engine/kv_cache.KVPageMapper), and planning here keeps this unit.
PAGE_BYTES = 2 << 20
#: Page of a GPU worker's pool unless one is chosen (ClusterConfig.worker_page_bytes, `warmserve worker
#: --page-mib`). The CUDA driver maps no page from inside a larger allocation (an H200 with driver 580 refused a
#: non-zero cuMemMap offset), so every page is an allocation of its own with its own driver calls: per GiB on an
#: H200 (bench/switch/README.md, 2026-12-04), a move took 23.5 ms at 2 MiB pages and 1.78 ms at 32 MiB, a KV
#: give-back 9.8-12.0 ms and 0.92-0.99 ms (the goal is <= 5 ms each). Weights then round up to 32 MiB per model.
GPU_PAGE_BYTES = 32 << 20
#: Tokens per KV block (PAPER.md §6): one block covers every layer's K and V, so blocks map onto whole pages.
KV_BLOCK_TOKENS = 256
#: Bytes per element of the weight and KV dtypes a checkpoint may use.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def align_up(n: int | float, to: int = PAGE_BYTES) -> int:
    """``n`` rounded up to a multiple of ``to``."""
    return int(math.ceil(n / to)) * to


def is_page_size(nbytes: int) -> bool:
    """Whether a pool's page may be ``nbytes`` long: a positive multiple of PAGE_BYTES."""
    return nbytes > 0 and nbytes % PAGE_BYTES == 0


def default_page_bytes(devices) -> int:
    """The page of pools on ``devices`` ("cuda:N" / "cpu:N" strings) when none is chosen: GPU_PAGE_BYTES when
    there is at least one and every one is a GPU, else PAGE_BYTES (one page size for every worker of a cluster, so
    that its controller plans with the workers' page)."""
    devices = list(devices)
    return GPU_PAGE_BYTES if devices and all(d.startswith("cuda") for d in devices) else PAGE_BYTES


def pages_for(nbytes: int | float, page_bytes: int = PAGE_BYTES) -> int:
    """Whole pages that hold ``nbytes``."""
    return int(math.ceil(nbytes / page_bytes))


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """KV-cache bytes one token takes over all layers: K and V, each ``num_kv_heads x head_dim`` elements."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def blocks_for_tokens(tokens: int, block_tokens: int = KV_BLOCK_TOKENS) -> int:
    """KV blocks a sequence of ``tokens`` tokens occupies."""
    return -(-int(tokens) // block_tokens)


def kv_block_bytes(bytes_per_token: int | float, tp: int = 1, *, block_tokens: int = KV_BLOCK_TOKENS,
                   page_bytes: int = PAGE_BYTES, row_bytes: int = 1) -> int:
    """Bytes one KV block takes on each GPU of a ``tp``-way instance, as the engine maps it: whole pages, and a
    whole number of cache rows (``row_bytes``: one token's K or V of one layer; 1 when unknown, as in planning).
    A block is mapped and unmapped on its own, so its padding is paid per block."""
    raw = max(bytes_per_token, 1) * block_tokens / tp
    padded = align_up(raw, page_bytes)
    while padded % row_bytes:
        padded += page_bytes
    return padded


def shard_bytes(weight_bytes: int | float, tp: int = 1, page_bytes: int = PAGE_BYTES) -> int:
    """Bytes one GPU holds for one tensor-parallel shard of the weights, page-aligned."""
    return align_up(weight_bytes / tp, page_bytes)


__all__ = ["PAGE_BYTES", "KV_BLOCK_TOKENS", "DTYPE_BYTES", "align_up", "is_page_size", "pages_for",
           "kv_bytes_per_token", "blocks_for_tokens", "kv_block_bytes", "shard_bytes"]
