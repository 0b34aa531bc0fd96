"""The host checkpoint cache, found in review of the memory path: one fill whose publish failed left the load's
other fills locked for good (and the load failed untyped, its bytes all landed); a missing file, a negative or a
float offset came out untyped or truncated; and a hit whose load the loader refused was counted."""

from __future__ import annotations

import fcntl
import os

import pytest

from warmserve.errors import InvalidArgumentError, WarmServeError
from warmserve.memory import PagePool
from warmserve.memory import host_cache as hc
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

PAGE = 4096


@pytest.fixture
def two_fills(tmp_path):
    """A cached load that fills two entries (nothing cached yet): (cache root, the running job)."""
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(8 * PAGE))
    b.write_bytes(os.urandom(8 * PAGE))
    root = str(tmp_path / "cache")
    with PagePool(64 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(32 * PAGE, "s")
        cache = HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=1 << 20, chunk_bytes=PAGE))
        job = cache.load(slot, [(str(a), 0, 0, 8 * PAGE), (str(b), 0, 8 * PAGE, 8 * PAGE)])
        assert len([n for n in os.listdir(root) if n.endswith(".fill")]) == 2
        yield root, job


def _wait_settled(root: str, job, entry) -> None:
    """job.wait(): any error typed, and ``entry``'s fill neither left behind nor its lock held."""
    try:
        job.wait()
    except Exception as e:  # noqa: BLE001 (the type is what is checked)
        assert isinstance(e, WarmServeError), repr(e)
    assert not os.path.exists(os.path.join(root, entry.key + ".fill")), "fill left behind"
    fd = os.open(os.path.join(root, entry.key + ".lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: still held by the ended job
    finally:
        os.close(fd)


# A fill whose publish fails: the load's other fills are still published, and their locks go.
def test_a_failed_publish_does_not_leak_the_other_fills(two_fills):
    root, job = two_fills
    first, second = job._fills[0][0], job._fills[1][0]
    os.unlink(first.path[: -len(".bin")] + ".fill")  # the first publish's rename will fail
    _wait_settled(root, job, second)
    assert second.users == 0 and first.users == 0
    # the claim itself (found in review: an aborted, unpublished second fill met every check above)
    assert os.path.exists(second.path) and job._cache.stats()["fills"] == 1


# Caller mistakes are typed, as slot.load's.
@pytest.fixture
def env(tmp_path):
    f = tmp_path / "ckpt.bin"
    f.write_bytes(os.urandom(16 * PAGE))
    with PagePool(64 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        cache = HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=1 << 20,
                                                    chunk_bytes=PAGE))
        yield str(f), pool, pool.create_slot(32 * PAGE, "s"), cache


def test_missing_checkpoint_file_is_typed(env):
    f, pool, slot, cache = env
    with pytest.raises(WarmServeError):  # slot.load raises InvalidArgumentError("cannot open ...")
        slot.load([(f + ".gone", 0, 0, 10)]).wait()
    with pytest.raises(WarmServeError):  # host_cache.py: os.stat -> FileNotFoundError
        cache.load(slot, [(f + ".gone", 0, 0, 10)]).wait()


@pytest.mark.parametrize("hit", [False, True])
def test_negative_slot_offset_is_typed(env, hit):
    f, pool, slot, cache = env
    if hit:
        cache.load(slot, [(f, 0, 0, 100)]).wait()
    with pytest.raises(InvalidArgumentError):  # slot.load's _count refuses it; the cache path: pybind RuntimeError
        cache.load(slot, [(f, 0, -PAGE, 10)]).wait()


def test_non_integer_offset_is_refused_not_truncated(env):
    f, pool, slot, cache = env
    with pytest.raises(InvalidArgumentError):
        slot.load([(f, 0, 0.5, 10)])
    with pytest.raises(InvalidArgumentError):  # host_cache.py: int(0.5) == 0, loads at offset 0
        cache.load(slot, [(f, 0, 0.5, 10)]).wait()


# A hit counts once its load has started.
def test_a_refused_hit_is_not_counted(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(os.urandom(4 * PAGE))
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(8 * PAGE, "s")
        cache = HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "c"), capacity_bytes=1 << 20, chunk_bytes=PAGE))
        cache.load(slot, [(str(f), 0, 0, PAGE)]).wait()
        before = cache.stats()
        with pytest.raises(InvalidArgumentError):  # outside the slot: refused by the loader
            cache.load(slot, [(str(f), 0, 1 << 30, PAGE)])
        after = cache.stats()
        assert (after["hits"], after["bytes_from_cache"]) == (before["hits"], before["bytes_from_cache"])


# Found in a review of the publish fix: an error after the rename (the lock's close, the LRU touch) was handled as
# an unpublished fill: the lock closed twice, the later fills left locked, a published entry not counted.
def test_close_error_after_rename_does_not_leak_the_other_fills(two_fills, monkeypatch):
    root, job = two_fills
    first_fd, second = job._fills[0][1], job._fills[1][0]
    real_close = os.close
    state = {"done": False}

    def close(fd):
        real_close(fd)
        if fd == first_fd and not state["done"]:
            state["done"] = True
            raise OSError(5, "Input/output error")  # released, and the error reported (close(2))

    monkeypatch.setattr(hc.os, "close", close)
    try:
        _wait_settled(root, job, second)
    finally:
        monkeypatch.setattr(hc.os, "close", real_close)
    # both published and counted (found in review: a published entry left uncounted met the checks above)
    assert job._cache.stats()["fills"] == 2
    assert os.path.exists(job._fills[0][0].path) and os.path.exists(second.path)


def test_touch_error_after_rename_is_not_an_unpublished_fill(tmp_path, monkeypatch, caplog):
    """_touch's os.utime raising (not FileNotFoundError) after the rename: the entry is published on disk, yet it
    is handled as a failed fill: logged "the next load fills it again" (the next load hits it), not counted in
    stats()["fills"], and its mapping is released."""
    a = tmp_path / "a.bin"
    a.write_bytes(os.urandom(8 * PAGE))
    root = str(tmp_path / "cache")
    with PagePool(64 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(32 * PAGE, "s")
        cache = HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=1 << 20, chunk_bytes=PAGE))
        job = cache.load(slot, [(str(a), 0, 0, 8 * PAGE)])

        def utime(*a, **k):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(hc.os, "utime", utime)
        job.wait()
        monkeypatch.undo()
        published = cache.contains(str(a))
        assert not (published and cache.stats()["fills"] == 0), (published, cache.stats()["fills"], caplog.text)


def test_a_cache_whose_directory_went_reports_nothing_cached_and_loads_again(tmp_path):
    """Found in review: with the directory removed (someone cleaning /dev/shm), stats() raised FileNotFoundError, so
    a worker answered no GetStats, and every load failed untyped."""
    import shutil

    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(8 * PAGE))
    root = str(tmp_path / "cache")
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool, \
            HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=1 << 20, chunk_bytes=PAGE)) as cache:
        shutil.rmtree(root)
        assert cache.stats()["usage_bytes"] == 0
        cache.load(pool.create_slot(8 * PAGE, "s"), [(str(f), 0, 0, 8 * PAGE)]).wait(timeout_s=60)
        assert cache.contains(str(f)) and cache.stats()["fills"] == 1
