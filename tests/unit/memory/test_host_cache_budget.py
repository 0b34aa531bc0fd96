"""The host checkpoint cache's budget bounds host memory: one load of a sharded checkpoint does not fill past it
(its shards' fills cannot be evicted: a shard that does not fit is loaded straight from its file), and entries
this process evicted, or that another worker evicted, are no longer mapped here after the next load. Its counters
count published fills only, and a close() during a fill leaves no mapping behind."""

from __future__ import annotations

import pytest

from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

from test_host_cache import MiB, slot_bytes, write  # this folder's checkpoint writer

PAGE = 4096


@pytest.fixture
def hpool():
    with PagePool(4096 * PAGE, page_bytes=PAGE, prefault=False) as p:
        yield p


def deleted_mappings(root: str) -> list[str]:
    """This process's mappings of files under root that were unlinked."""
    with open("/proc/self/maps") as f:
        return [line.split(None, 5)[5].strip() for line in f
                if len(line.split(None, 5)) == 6 and root in line and line.rstrip().endswith("(deleted)")]


def config(root, capacity_bytes: int) -> HostCacheConfig:
    return HostCacheConfig(root=str(root), capacity_bytes=capacity_bytes, chunk_bytes=256 << 10)


def load(cache, pool, paths: list[str], nbytes: int) -> list[bytes]:
    """One load of every file in `paths` (the shards of one checkpoint) into one slot; the bytes it got."""
    slot = pool.create_slot(nbytes * len(paths), "s")
    try:
        cache.load(slot, [(p, 0, i * nbytes, nbytes) for i, p in enumerate(paths)]).wait()
        return [slot_bytes(slot, i * nbytes, nbytes) for i in range(len(paths))]
    finally:
        slot.close()


def test_one_load_of_shards_larger_than_the_budget_stays_within_it(tmp_path, hpool):
    shards = [str(tmp_path / f"model-{i:05d}.safetensors") for i in range(3)]
    data = [write(p, 2 * MiB, 20 + i) for i, p in enumerate(shards)]
    with HostCheckpointCache(config(tmp_path / "cache", 5 * MiB)) as cache:
        assert load(cache, hpool, shards, 2 * MiB) == data
        st = cache.stats()
        assert st["usage_bytes"] <= 5 * MiB, st
        assert (st["fills"], st["bypassed"]) == (2, 1)
        # Again: the cached shards are hits, and the third does not evict them (the load reads them) to be cached
        # in their place, only for the next load to miss them.
        assert load(cache, hpool, shards, 2 * MiB) == data
        st = cache.stats()
        assert (st["hits"], st["fills"], st["bypassed"], st["evicted"]) == (2, 2, 2, 0), st
        assert st["usage_bytes"] <= 5 * MiB


def test_an_entry_this_process_evicts_is_no_longer_mapped_by_it(tmp_path, hpool):
    root = str(tmp_path / "cache")
    files = [str(tmp_path / f"{c}.bin") for c in "abcd"]
    for i, p in enumerate(files):
        write(p, 2 * MiB, 30 + i)
    kept = []  # finished jobs, kept as a ModelLoad keeps its own: their references to the entries go at wait
    with HostCheckpointCache(config(root, 5 * MiB)) as cache:
        for p in files:
            slot = hpool.create_slot(2 * MiB, "s")
            kept.append(cache.load(slot, [(p, 0, 0, 2 * MiB)]))
            assert kept[-1].wait() == 2 * MiB and kept[-1].progress == (2 * MiB, 2 * MiB)
            slot.close()
            assert deleted_mappings(root) == []
        assert cache.stats()["evicted"] == 2


def test_an_entry_another_worker_evicts_is_let_go_of_at_the_next_load(tmp_path, hpool):
    root = str(tmp_path / "cache")
    files = {c: str(tmp_path / f"{c}.bin") for c in "abcx"}
    for i, p in enumerate(files.values()):
        write(p, 2 * MiB, 40 + i)
    with HostCheckpointCache(config(root, 4 * MiB)) as w1, HostCheckpointCache(config(root, 4 * MiB)) as w2:
        load(w1, hpool, [files["a"]], 2 * MiB)
        load(w2, hpool, [files["b"]], 2 * MiB)
        load(w2, hpool, [files["c"]], 2 * MiB)  # evicts a, which w1 maps
        assert not w1.contains(files["a"])
        load(w1, hpool, [files["b"]], 2 * MiB)  # a load of something else
        assert deleted_mappings(root) == []


def test_a_fill_that_never_ran_is_not_counted(tmp_path, hpool):
    path, n = str(tmp_path / "ckpt.bin"), MiB
    write(path, n, 50)
    with HostCheckpointCache(config(tmp_path / "cache", 8 * MiB)) as cache:
        s = hpool.create_slot(n, "x")
        with pytest.raises(Exception):  # the range leaves the slot: the C++ job refuses to start
            cache.load(s, [(path, 0, 0, n), (path, 0, n, 4096)])
        st = cache.stats()
        assert (st["fills"], st["bytes_filled"]) == (0, 0)
        cache.load(s, [(path, 0, 0, n)]).wait()
        st = cache.stats()
        assert (st["fills"], st["bytes_filled"]) == (1, n)


def test_a_fill_published_after_close_is_not_kept_mapped(tmp_path, hpool):
    root = str(tmp_path / "cache")
    path, n = str(tmp_path / "ckpt.bin"), 4 * MiB
    data = write(path, n, 51)
    cache = HostCheckpointCache(config(root, 8 * MiB))
    s = hpool.create_slot(n, "x")
    job = cache.load(s, [(path, 0, 0, n)])
    cache.close()  # while the fill runs (or just after it ran: it is published in wait)
    job.wait()
    assert slot_bytes(s, 0, n) == data and cache.contains(path)  # published, for other workers
    assert cache._entries == {}
    assert not [m for m in open("/proc/self/maps") if root in m]
    s.close()
