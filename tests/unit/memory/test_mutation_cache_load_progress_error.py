"""Gaps found by mutation testing of memory/cache_load.py: a load through the host cache whose progress callback
raises is stopped and settled, and wait() raises the callback's own error: for a fill, the fill is deleted and
unmapped at once (while the caller still holds the job); for a hit (a load with no fill and so no gaps thread), the
entry stays published and the next load hits it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

PAGE = 4096
N = 16 * PAGE


def _maps_under(root: str) -> list[str]:
    """Lines of /proc/self/maps that map a file under ``root``."""
    with open("/proc/self/maps") as f:
        return [ln.strip() for ln in f if root in ln]


def _progress(done: int, total: int) -> None:
    raise RuntimeError("progress callback failed")


def test_a_fill_whose_progress_callback_raises_is_deleted_and_unmapped(tmp_path):
    """A 16-page file loaded through the cache with a progress callback that raises: wait() raises its error;
    then nothing under the cache's root is mapped into this process, no .fill or .bin is left, and no fill was
    counted, though the test still holds the job."""
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, N, dtype=np.uint8).tobytes())
    root = str(tmp_path / "cache")
    with PagePool(2 * N, page_bytes=PAGE, prefault=False) as pool, \
            HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=4 * N, chunk_bytes=PAGE)) as cache:
        slot = pool.create_slot(N, "s")
        job = cache.load(slot, [(str(path), 0, 0, N)], progress=_progress)
        assert _maps_under(root)  # the fill is mapped while the load runs
        with pytest.raises(RuntimeError, match="progress callback failed"):
            job.wait(30.0)
        assert _maps_under(root) == []
        assert [n for n in os.listdir(root) if n.endswith((".fill", ".bin"))] == []
        assert cache.stats()["fills"] == 0
        assert job.done


def test_a_hit_whose_progress_callback_raises_raises_that_error_and_keeps_the_entry(tmp_path):
    """The entry filled by a first load; a second load of it (a hit: no fill, no gaps thread) with a raising
    progress callback raises that RuntimeError, nothing else; the entry is still published and a third load hits it
    and reads the file's bytes."""
    data = np.random.default_rng(5).integers(0, 256, N, dtype=np.uint8).tobytes()
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(data)
    root = str(tmp_path / "cache")
    with PagePool(4 * N, page_bytes=PAGE, prefault=False) as pool, \
            HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=4 * N, chunk_bytes=PAGE)) as cache:
        cache.load(pool.create_slot(N, "fill"), [(str(path), 0, 0, N)]).wait(30.0)
        assert (cache.stats()["fills"], cache.stats()["hits"]) == (1, 0)
        with pytest.raises(RuntimeError, match="progress callback failed"):
            cache.load(pool.create_slot(N, "hit"), [(str(path), 0, 0, N)], progress=_progress).wait(30.0)
        assert cache.contains(str(path))
        slot = pool.create_slot(N, "again")
        assert cache.load(slot, [(str(path), 0, 0, N)]).wait(30.0) == N
        assert cache.stats()["hits"] == 2
        assert slot.tensor(0, (N,), torch.uint8).numpy().tobytes() == data
