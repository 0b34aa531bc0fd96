"""The host checkpoint cache against other workers and other threads: a fill left by a worker that died, an entry
evicted and filled again by another worker, one file under two spellings in one load, and a publish that finds
the entry already mapped by another thread of this process (on the fake cuda driver)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

from test_host_cache import MiB, _run_on_fake_driver, write  # this folder's checkpoint writer and fake driver

PAGE = 4096


def mappings_of(root: str) -> list[str]:
    """This process's mappings of files under root (a deleted one ends in '(deleted)')."""
    with open("/proc/self/maps") as f:
        return [line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6 and root in line]


@pytest.fixture
def hpool():
    with PagePool(2048 * PAGE, page_bytes=PAGE, prefault=False) as p:
        yield p


def load(cache, pool, path, nbytes: int, tag: str = "s") -> None:
    slot = pool.create_slot(nbytes, tag)
    try:
        cache.load(slot, [(str(path), 0, 0, nbytes)]).wait()
    finally:
        slot.close()


#: A worker that starts a fill of FILE into the cache at ROOT and is killed before it ends.
DYING = r"""
import os, signal, sys
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache
pool = PagePool(1024 * 4096, page_bytes=4096, prefault=False)
cache = HostCheckpointCache(HostCacheConfig(root=sys.argv[1], capacity_bytes=5 << 20))
job = cache.load(pool.create_slot(2 << 20, "w"), [(sys.argv[2], 0, 0, 2 << 20)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_fill_left_by_a_worker_that_died_is_reclaimed_before_a_live_entry_is_evicted(tmp_path, hpool):
    root = str(tmp_path / "cache")
    for name in "xab":
        write(tmp_path / f"{name}.bin", 2 * MiB, ord(name))
    r = subprocess.run([sys.executable, "-c", DYING, root, str(tmp_path / "x.bin")], capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr[-800:]
    assert [f for f in os.listdir(root) if f.endswith(".fill")], "the dead worker left no fill: nothing to test"
    with HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=5 * MiB)) as cache:
        load(cache, hpool, tmp_path / "a.bin", 2 * MiB, "a")
        load(cache, hpool, tmp_path / "b.bin", 2 * MiB, "b")  # 4 MiB of entries and 2 of a dead fill: over 5
        assert cache.contains(str(tmp_path / "a.bin")), "a live entry was evicted for the dead worker's fill"
        assert not [f for f in os.listdir(root) if f.endswith(".fill")]
        st = cache.stats()
        assert st["orphans"] == 1 and st["evicted"] == 0 and st["usage_bytes"] == 4 * MiB


def test_a_live_fill_of_another_worker_is_not_reclaimed(tmp_path, hpool):
    """A fill in progress holds its lock: eviction leaves it (and its bytes count) alone."""
    root = str(tmp_path / "cache")
    for name in "xa":
        write(tmp_path / f"{name}.bin", 2 * MiB, ord(name))
    with HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=8 * MiB)) as w1, \
            HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=8 * MiB)) as w2:
        slot = hpool.create_slot(2 * MiB, "x")
        job = w1.load(slot, [(str(tmp_path / "x.bin"), 0, 0, 2 * MiB)])  # its .fill lives until wait()
        load(w2, hpool, tmp_path / "a.bin", 2 * MiB, "a")
        assert [f for f in os.listdir(root) if f.endswith(".fill")], "a live fill was unlinked"
        job.wait()
        assert w1.contains(str(tmp_path / "x.bin"))
        slot.close()


def test_an_entry_evicted_and_filled_again_by_another_worker_is_not_served_from_the_deleted_file(tmp_path, hpool):
    """w1 maps a; w2 evicts it (loading b and c under a 4 MiB budget) and fills it again: a new file under the
    same name and size. w1's next load of a must map that one and let go of the deleted copy, which otherwise
    stays in host memory as long as w1 lives (a held twice)."""
    root = str(tmp_path / "cache")
    for name in "abc":
        write(tmp_path / f"{name}.bin", 2 * MiB, ord(name))
    w1 = HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=4 * MiB))
    w2 = HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=4 * MiB))
    try:
        load(w1, hpool, tmp_path / "a.bin", 2 * MiB)
        for name in "bca":
            load(w2, hpool, tmp_path / f"{name}.bin", 2 * MiB)
        load(w1, hpool, tmp_path / "a.bin", 2 * MiB)
        w2.close()
        a_entry = w1.entry_path(str(tmp_path / "a.bin"))
        maps = mappings_of(root)
        assert maps == [a_entry], f"w1 maps {maps}, the entry now is {a_entry}"
    finally:
        w1.close()
        w2.close()


def test_one_file_under_two_spellings_and_a_symlink_in_one_cached_load(tmp_path, hpool):
    """Three names of one file are one cache entry: the load fills it once instead of waiting on the fill lock
    it holds itself (lock_timeout_s, then TimeoutError_)."""
    data = write(tmp_path / "x.bin", 3 * MiB, 1)
    os.symlink(tmp_path / "x.bin", tmp_path / "link.bin")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), lock_timeout_s=2.0)) as cache:
            for round_ in ("fill", "hit"):
                slot = hpool.create_slot(3 * MiB, round_)
                cache.load(slot, [("x.bin", 0, 0, MiB), ("./x.bin", MiB, MiB, MiB),
                                  ("link.bin", 2 * MiB, 2 * MiB, MiB)]).wait()
                got = slot.tensor(0, (3 * MiB,), torch.uint8).numpy().tobytes()
                assert got == data, round_
                slot.close()
            st = cache.stats()
            assert (st["fills"], st["hits"], st["usage_bytes"]) == (1, 1, 3 * MiB)
    finally:
        os.chdir(cwd)


#: Between the fill's rename (the entry is published) and its record in this process, another thread of the
#: process loads the same file: it maps and registers the published file itself. The filler's mapping is then no
#: one's: it must be unregistered and let go of when its load is done, not left registered for good (close()
#: only sees the entries it recorded). On csrc/testing/fake_libcuda.c, which counts live registrations.
FAKE_CUDA_PUBLISH_RACE = r"""
import ctypes, os, sys, threading
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache
fake = ctypes.CDLL("libcuda.so.1")
fake.fake_cuda_stat.restype = ctypes.c_long
REGS = 5
root, path = sys.argv[1], sys.argv[2]
n, PB = os.path.getsize(path), 64 << 10
errors, real_rename = [], os.rename
with PagePool(2 * -(-n // PB) * PB, backend="cuda", page_bytes=PB) as pool:
    cache = HostCheckpointCache(HostCacheConfig(root=root))

    def load(tag):
        s = pool.create_slot(n, tag)
        cache.load(s, [(path, 0, 0, n)]).wait()
        s.close()

    def other():
        try:
            load("other")
        except BaseException as e:  # reported by the main thread below
            errors.append(e)

    def rename_then_another_thread_loads(src, dst):
        real_rename(src, dst)
        t = threading.Thread(target=other)
        t.start()
        t.join(60)
        assert not t.is_alive(), "the other thread's load hung"

    os.rename = rename_then_another_thread_loads
    load("filler")
    os.rename = real_rename
    assert not errors, errors
    assert (cache.stats()["fills"], cache.stats()["hits"]) == (1, 1), cache.stats()
    cache.close()
    assert fake.fake_cuda_stat(REGS) == 0, f"{fake.fake_cuda_stat(REGS)} registration(s) left after close()"
print("fake cuda cache OK")
"""


def test_a_publish_that_finds_the_entry_mapped_by_another_thread_unregisters_its_own_on_a_fake_driver(tmp_path):
    _run_on_fake_driver(tmp_path, FAKE_CUDA_PUBLISH_RACE, 2 * MiB)
