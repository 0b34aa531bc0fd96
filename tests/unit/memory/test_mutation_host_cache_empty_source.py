"""A gap found by mutation testing of memory/host_cache.py: a load source of 0 bytes (a safetensors tensor with a
zero dimension) is accepted by the cache's bounds check as slot.load accepts it, on a miss (a fill) and on a hit,
and the other sources of the load land as they would without it."""

from __future__ import annotations

import numpy as np
import torch

from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

PAGE = 4096
N = 8 * PAGE


def test_a_zero_byte_source_loads_through_the_cache_on_a_fill_and_on_a_hit(tmp_path):
    """Sources (file bytes [0, N) -> slot 0) and (file offset N, 0 bytes -> slot N: the file's end): the first load
    fills the entry, the second hits it; both return N bytes and the slot holds the file's bytes."""
    data = np.random.default_rng(11).integers(0, 256, N, dtype=np.uint8).tobytes()
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(data)
    sources = [(str(path), 0, 0, N), (str(path), N, N, 0)]
    with PagePool(4 * N, page_bytes=PAGE, prefault=False) as pool, \
            HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=4 * N,
                                                chunk_bytes=PAGE)) as cache:
        for tag, stats in (("fill", (1, 0)), ("hit", (1, 1))):
            slot = pool.create_slot(2 * N, tag)
            assert cache.load(slot, sources).wait(30.0) == N
            assert (cache.stats()["fills"], cache.stats()["hits"]) == stats
            assert slot.tensor(0, (N,), torch.uint8).numpy().tobytes() == data
