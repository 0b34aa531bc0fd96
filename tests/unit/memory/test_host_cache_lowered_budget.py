"""A cache directory filled under one budget and then used with a lower one (a restart with a smaller
--host-cache-gib, or a second worker configured smaller than the one that filled it): the lower budget is enforced
at once, not only by the next fill. Found in review: 6 MiB stayed under a 2 MiB budget for as long as loads hit."""

from __future__ import annotations

import os

import pytest

from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

from test_host_cache import MiB, slot_bytes, write  # this folder's checkpoint writer

PAGE = 4096


@pytest.fixture
def hpool():
    with PagePool(4096 * PAGE, page_bytes=PAGE, prefault=False) as p:
        yield p


def config(root, capacity_bytes: int) -> HostCacheConfig:
    return HostCacheConfig(root=str(root), capacity_bytes=capacity_bytes, chunk_bytes=256 << 10)


def load(cache, pool, paths: list[str]) -> list[bytes]:
    """One load of every 2 MiB file in `paths` into one slot; the bytes it got."""
    slot = pool.create_slot(2 * MiB * len(paths), "s")
    try:
        cache.load(slot, [(p, 0, i * 2 * MiB, 2 * MiB) for i, p in enumerate(paths)]).wait()
        return [slot_bytes(slot, i * 2 * MiB, 2 * MiB) for i in range(len(paths))]
    finally:
        slot.close()


def entries(root) -> set[str]:
    return {n for n in os.listdir(root) if n.endswith(".bin")}


@pytest.fixture
def files(tmp_path):
    """Three 2 MiB checkpoints and a cache root: (paths, their bytes, root)."""
    paths = [str(tmp_path / f"m{i}.bin") for i in range(3)]
    return paths, [write(p, 2 * MiB, 40 + i) for i, p in enumerate(paths)], tmp_path / "cache"


def fill(cache, pool, paths: list[str]) -> None:
    """Cache `paths` one load each, in that order (the first is the least recently used)."""
    for p in paths:
        load(cache, pool, [p])
    assert cache.usage_bytes() == 2 * MiB * len(paths)


def test_a_cache_opened_with_a_lower_budget_evicts_down_to_it_and_stays_there_while_loads_hit(files, hpool):
    paths, data, root = files
    with HostCheckpointCache(config(root, 8 * MiB)) as big:
        fill(big, hpool, paths)
    with HostCheckpointCache(config(root, 2 * MiB)) as small:  # restarted with a smaller budget
        st = small.stats()
        assert st["usage_bytes"] <= 2 * MiB, st
        assert st["evicted"] == 2
        assert small.contains(paths[2]) and not small.contains(paths[0])  # the most recently used one kept
        for _ in range(3):
            assert load(small, hpool, paths) == data
            st = small.stats()
            assert st["usage_bytes"] <= 2 * MiB, st
        assert (st["hits"], st["bypassed"]) == (3, 6), st  # m2 from the cache, the others from their files


def test_a_worker_with_a_lower_budget_evicts_down_to_it_at_its_next_load_sparing_what_it_reads(files, hpool):
    paths, data, root = files
    # the small worker starts on an empty directory, then one with a larger budget fills it
    with HostCheckpointCache(config(root, 2 * MiB)) as small, HostCheckpointCache(config(root, 8 * MiB)) as big:
        fill(big, hpool, paths)
        assert load(small, hpool, [paths[0]]) == [data[0]]  # the least recently used, but read by this load
        st = small.stats()
        assert (st["hits"], st["evicted"]) == (1, 2), st
        assert st["usage_bytes"] <= 2 * MiB
        assert entries(root) == {os.path.basename(small.entry_path(paths[0]))}
        assert load(big, hpool, paths) == data  # the other worker's evicted entries are filled again, in its budget
        assert big.usage_bytes() == 6 * MiB
