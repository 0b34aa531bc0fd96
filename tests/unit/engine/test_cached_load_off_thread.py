"""A load through the host checkpoint cache waits for another worker's fill of the same file on the load's own
thread, not the caller's (found in review: a worker's loop thread sat in the cache's lock wait, so its other
models' streams and every request to it stopped, for up to the cache's lock_timeout_s); a cancel stops that wait."""

from __future__ import annotations

import fcntl
import os

import pytest

from warmserve.engine import load_model
from warmserve.engine.demo import write_demo_models
from warmserve.errors import CancelledError
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache


@pytest.fixture
def held(tmp_path):
    """(checkpoint dir, cache, pool) with the cache entry of its weights file locked as another worker's fill holds
    it; the lock is let go of by calling the yielded release()."""
    path = write_demo_models(None, ["llama-20m"])["llama-20m"]
    weights = os.path.join(path, "model.safetensors")
    cache = HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=1 << 30,
                                                lock_timeout_s=3.0))
    key = cache._key(os.path.realpath(weights), os.stat(weights))
    fd = os.open(os.path.join(cache.config.root, key + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: it conflicts with the cache's own flock

    def release():
        fcntl.flock(fd, fcntl.LOCK_UN)

    with PagePool(256 << 20, page_bytes=2 << 20, prefault=False) as pool:
        yield path, cache, pool, release
    os.close(fd)
    cache.close()


def test_the_load_call_returns_while_another_fill_holds_the_file(held):
    path, cache, pool, release = held
    job = load_model(path, pool, host_cache=cache)  # before the fix: waited here 3 s, then TimeoutError_
    assert not job.done
    release()
    lm = job.wait(timeout_s=60)
    assert lm.weight_bytes > 0 and cache.stats()["fills"] == 1


def test_a_cancel_stops_the_wait_for_another_fill(held):
    path, cache, pool, release = held
    free = pool.stats()["free_pages"]
    job = load_model(path, pool, host_cache=cache)
    job.cancel()  # returns once the load's thread has left the lock wait
    with pytest.raises(CancelledError):
        job.wait(timeout_s=0)
    assert pool.stats()["free_pages"] == free and cache.stats()["fills"] == 0
    release()


def test_a_fill_held_past_the_lock_timeout_reads_the_file_not_cancelled(held, tmp_path):
    """Found in review: the lock wait's TimeoutError_ read as "not finished yet" to a worker polling its load,
    which then reported the load cancelled. Since a later review, a wait past lock_timeout_s reads the file (a
    CacheBusyError, a 503, failed the load though the file was readable): the load and the prewarm succeed."""
    from warmserve.worker import InProcessWorker

    path, cache, pool, release = held
    busy = HostCheckpointCache(HostCacheConfig(root=cache.config.root, capacity_bytes=1 << 30, lock_timeout_s=0.3))
    lm = load_model(path, pool, host_cache=busy).wait(timeout_s=30)
    assert lm.weight_bytes > 0 and busy.stats()["bypassed"] >= 1 and busy.stats()["fills"] == 0
    with InProcessWorker("cpu", memory_gib=0.25, prefault=False, host_cache=busy) as w:
        w.prewarm(path, "m")
    assert busy.stats()["bypassed"] >= 2
    busy.close()
    release()
