"""A fill that ends while another load's eviction runs, between its scan of the cache directory and its check for
fills left by dead workers (found in review): it is no orphan, and when it was published its entry counts against
the budget (and can be evicted), or the budget is passed."""
import os
import threading

import numpy as np
import pytest

from warmserve.errors import CancelledError
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

MiB = 1 << 20


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(5)
    k, l_ = str(tmp_path / "k.bin"), str(tmp_path / "l.bin")
    rng.integers(0, 256, 4 * MiB, dtype=np.uint8).tofile(k)
    rng.integers(0, 256, 4 * MiB, dtype=np.uint8).tofile(l_)
    cache = HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=6 * MiB,
                                                lock_timeout_s=60))
    pool = PagePool(4096 * 4096, page_bytes=4096, prefault=False)
    yield cache, pool, k, l_
    cache.close()
    pool.close()


def _pause_after_scan(cache):
    """Hooks: the eviction run by a thread named "load-L" stops right after its scan (``scanned`` set) until
    ``go`` is set."""
    scanned, go, in_evict = threading.Event(), threading.Event(), threading.local()
    scan, evict = cache._scan, cache._evict_locked

    def hooked_scan():
        out = scan()
        if getattr(in_evict, "on", False):
            scanned.set()
            assert go.wait(60)
        return out

    def hooked_evict(*a, **k):
        in_evict.on = threading.current_thread().name == "load-L"
        try:
            return evict(*a, **k)
        finally:
            in_evict.on = False

    cache._scan, cache._evict_locked = hooked_scan, hooked_evict
    return scanned, go


def _load_l_in_thread(cache, pool, path):
    res = {}

    def run():
        try:
            res["n"] = cache.load(pool.create_slot(4 * MiB, "l"), [(path, 0, 0, 4 * MiB)]).wait()
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            res["error"] = e

    t = threading.Thread(target=run, name="load-L")
    t.start()
    return t, res


def test_a_fill_published_during_an_eviction_is_counted_and_evictable(setup):
    cache, pool, k, l_ = setup
    scanned, go = _pause_after_scan(cache)
    job_k = cache.load(pool.create_slot(4 * MiB, "k"), [(k, 0, 0, 4 * MiB)])  # K's fill in progress, its lock held
    t, res = _load_l_in_thread(cache, pool, l_)
    assert scanned.wait(60)  # L's eviction has listed K's fill
    assert job_k.wait() == 4 * MiB  # K published: renamed onto its entry, its lock let go of
    go.set()
    t.join(60)
    assert res.get("n") == 4 * MiB, res
    st = cache.stats()
    assert st["orphans"] == 0, st  # K's fill was no dead worker's
    assert st["usage_bytes"] <= st["capacity_bytes"], st
    assert st["evicted"] == 1 and not cache.contains(k) and cache.contains(l_), st  # K's entry made room for L


def test_a_fill_deleted_during_an_eviction_is_no_orphan(setup):
    cache, pool, k, l_ = setup
    scanned, go = _pause_after_scan(cache)
    job_k = cache.load(pool.create_slot(4 * MiB, "k"), [(k, 0, 0, 4 * MiB)])
    t, res = _load_l_in_thread(cache, pool, l_)
    assert scanned.wait(60)
    job_k.cancel()
    try:
        job_k.wait()  # its fill deleted, its lock let go of (or, had the copy won the race, published)
    except CancelledError:
        pass
    go.set()
    t.join(60)
    assert res.get("n") == 4 * MiB, res
    st = cache.stats()
    assert st["orphans"] == 0, st
    assert st["usage_bytes"] <= st["capacity_bytes"] and cache.contains(l_), st
    assert not any(n.endswith(".fill") for n in os.listdir(cache.config.root))
