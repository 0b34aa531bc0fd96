"""A cache fill's gaps (the file bytes no load source covers: a header; for a tensor-parallel rank, the other
ranks' shards) are read on a thread beside the load (found in review: read first, on the caller's thread, before
the load's own copies began). The load ends when both have; a cancel stops both; gaps that cannot be read cost
the fill, not the load."""

from __future__ import annotations

import fcntl
import os
import threading

import numpy as np
import pytest
import torch

from warmserve.errors import CancelledError
from warmserve.memory import PagePool
from warmserve.memory import cache_entry
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

PAGE = 4096
N = 64 * PAGE  # the file: two halves, one per "rank"


@pytest.fixture
def env(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    data = np.random.default_rng(7).integers(0, 256, N, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    root = str(tmp_path / "cache")
    with PagePool(2 * N, page_bytes=PAGE, prefault=False) as pool, \
            HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=16 * N, chunk_bytes=PAGE)) as cache:
        yield str(path), data, root, pool, cache


def _half(path: str, rank: int) -> list[tuple]:
    """Rank ``rank``'s shard: its half of the file, at the start of its slot."""
    return [(path, rank * N // 2, 0, N // 2)]


def _slot_bytes(slot) -> bytes:
    return slot.tensor(0, (N // 2,), torch.uint8).numpy().tobytes()


def _lock_free(root: str, entry) -> bool:
    fd = os.open(os.path.join(root, entry.key + ".lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.fixture
def held_gaps(monkeypatch):
    """fill_gaps held until ``go`` is set (or its stop is): records the thread it ran on."""
    go, ran_on, real = threading.Event(), [], cache_entry.fill_gaps

    def held(path, entry, ranges, stop=None):
        ran_on.append(threading.current_thread())
        while not go.wait(0.01):
            if stop is not None and stop.is_set():
                break
            assert len(ran_on) == 1 and ran_on[0] is not threading.main_thread(), "gaps read on the caller's thread"
        return real(path, entry, ranges, stop)

    monkeypatch.setattr(cache_entry, "fill_gaps", held)
    return go, ran_on


def test_a_ranks_load_returns_while_the_other_shard_is_read_and_the_fill_holds_both(env, held_gaps):
    path, data, root, pool, cache = env
    go, ran_on = held_gaps
    slot0 = pool.create_slot(N // 2, "rank0")
    job = cache.load(slot0, _half(path, 0))  # before the fix: read the other half here, on this thread
    assert ran_on and ran_on[0] is not threading.current_thread()
    assert not job.done  # the fill is not done until its gaps are
    go.set()
    assert job.wait(timeout_s=60) == N // 2 and job.done
    assert _slot_bytes(slot0) == data[: N // 2]
    slot1 = pool.create_slot(N // 2, "rank1")
    cache.load(slot1, _half(path, 1)).wait(timeout_s=60)  # a hit: the gaps were read into the entry
    assert _slot_bytes(slot1) == data[N // 2:]
    assert cache.stats()["hits"] == 1 and cache.stats()["fills"] == 1


def test_wait_with_a_timeout_waits_for_the_gaps_too(env, held_gaps):
    path, data, root, pool, cache = env
    go, _ = held_gaps
    job = cache.load(pool.create_slot(N // 2, "r0"), _half(path, 0))
    with pytest.raises(TimeoutError):
        job.wait(timeout_s=0.3)
    go.set()
    assert job.wait(timeout_s=60) == N // 2 and cache.stats()["fills"] == 1


def test_cancel_stops_the_gaps_and_the_fill_goes(env, held_gaps):
    path, data, root, pool, cache = env
    job = cache.load(pool.create_slot(N // 2, "r0"), _half(path, 0))
    entry = job._fills[0][0]
    job.cancel()
    try:
        job.wait(timeout_s=60)  # the copies may have ended before the cancel: the load stands, its fill does not
    except CancelledError:
        pass
    assert job.done and not os.path.exists(os.path.join(root, entry.key + ".fill")) and _lock_free(root, entry)
    assert cache.stats()["fills"] == 0 and not cache.contains(path)


def test_gaps_that_cannot_be_read_cost_the_fill_not_the_load(env, monkeypatch, caplog):
    path, data, root, pool, cache = env

    def broken(path, entry, ranges, stop=None):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(cache_entry, "fill_gaps", broken)
    slot = pool.create_slot(N // 2, "r0")
    job = cache.load(slot, _half(path, 0))
    entry = job._fills[0][0]
    assert job.wait(timeout_s=60) == N // 2 and _slot_bytes(slot) == data[: N // 2]
    assert "could not be read into its fill" in caplog.text
    assert not cache.contains(path) and _lock_free(root, entry) and entry.users == 0
    monkeypatch.undo()
    cache.load(pool.create_slot(N // 2, "r1"), _half(path, 1)).wait(timeout_s=60)  # filled again, whole
    assert cache.contains(path)
