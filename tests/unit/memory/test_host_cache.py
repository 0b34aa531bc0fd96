"""The host checkpoint cache (memory/host_cache.py) on the host backend: shared by processes, same bytes as a
plain load, LRU eviction under the budget, invalidation of a changed file, clean abort of a failed fill."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from warmserve.errors import CancelledError, InvalidArgumentError
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

PAGE = 4096
MiB = 1 << 20

#: A worker process: loads FILE through the cache at ROOT into a slot, prints the slot bytes' digest and stats.
WORKER = r"""
import hashlib, json, sys, torch
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache
root, path, nbytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.stdin.readline()  # start together
with PagePool(-(-nbytes // 4096) * 4096, page_bytes=4096, prefault=False) as pool, \
        HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=1 << 30, chunk_bytes=1 << 20)) as cache:
    slot = pool.create_slot(nbytes, "w")
    cache.load(slot, [(path, 0, 0, nbytes)]).wait()
    digest = hashlib.sha256(slot.tensor(0, (nbytes,), torch.uint8).numpy().tobytes()).hexdigest()
    print(json.dumps({"digest": digest, "stats": cache.stats()}))
"""


def write(path, nbytes: int, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(data)
    return data


def workers(root, path, nbytes: int, n: int) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(path), str(nbytes)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:  # every worker is started (imports done or not) before any is told to go
        p.stdin.write("go\n")
        p.stdin.flush()
    out = []
    for p in procs:
        o, e = p.communicate(timeout=120)
        assert p.returncode == 0, e
        out.append(json.loads(o.strip().splitlines()[-1]))
    return out


def slot_bytes(slot, off: int, n: int) -> bytes:
    return slot.tensor(off, (n,), torch.uint8).numpy().tobytes()


@pytest.fixture
def cache(tmp_path):
    with HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=64 * MiB,
                                             chunk_bytes=256 << 10)) as c:
        yield c


@pytest.fixture
def hpool():
    with PagePool(512 * PAGE * 8, page_bytes=PAGE, prefault=False) as p:
        yield p


def test_second_process_maps_the_entry_without_reading_the_file(tmp_path, cache, hpool):
    path, n = tmp_path / "ckpt.safetensors", 3 * MiB + 123
    data = write(path, n, 1)
    slot = hpool.create_slot(4 * MiB, "fill")
    cache.load(slot, [(str(path), 0, 0, n)]).wait()
    assert cache.stats()["fills"] == 1 and cache.contains(str(path))
    # Overwrite the published entry in place with other bytes of its size (the checkpoint is left alone): a worker
    # that read the file would see the checkpoint's bytes; one that maps the entry sees the entry's. (Rewriting the
    # checkpoint itself now changes the key: its ctime moves, ``cache_files.entry_key``.)
    other = bytes(n)
    with open(cache.entry_path(str(path)), "r+b") as f:
        f.write(other)
    (res,) = workers(cache.config.root, path, n, 1)
    assert res["stats"]["hits"] == 1 and res["stats"]["fills"] == 0 and res["stats"]["bytes_filled"] == 0
    assert res["digest"] == hashlib.sha256(other).hexdigest() != hashlib.sha256(data).hexdigest()


def test_two_workers_at_once_fill_once(tmp_path):
    path, n = tmp_path / "ckpt.bin", 24 * MiB
    data = write(path, n, 2)
    root = tmp_path / "cache"
    res = workers(root, path, n, 2)
    assert sorted(r["stats"]["fills"] for r in res) == [0, 1]
    assert sorted(r["stats"]["hits"] for r in res) == [0, 1]
    assert {r["digest"] for r in res} == {hashlib.sha256(data).hexdigest()}
    names = sorted(os.listdir(root))
    assert [x for x in names if x.endswith(".bin")] and not [x for x in names if x.endswith(".fill")]


def test_cached_load_puts_the_same_bytes_in_the_slot_as_a_plain_load(tmp_path, cache, hpool):
    path, n = tmp_path / "ckpt.bin", 5 * MiB + 777
    write(path, n, 3)
    # gaps between the ranges (like a header and padding), an unaligned slot offset, ranges out of file order
    sources = [(str(path), 4096 + 8, 0, 2 * MiB), (str(path), 3 * MiB, 2 * MiB + 256, MiB + 100),
               (str(path), 100, 4 * MiB, 3000)]
    plain = hpool.create_slot(5 * MiB, "plain")
    plain.load(sources).wait()
    want = [slot_bytes(plain, off, k) for _, _, off, k in sources]
    for expect in ("fills", "hits"):
        s = hpool.create_slot(5 * MiB, expect)
        job = cache.load(s, sources)
        assert job.wait() == sum(x[3] for x in sources)
        assert cache.stats()[expect] == 1
        assert [slot_bytes(s, off, k) for _, _, off, k in sources] == want
        s.close()
    with open(cache.entry_path(str(path)), "rb") as f, open(path, "rb") as g:
        assert f.read() == g.read()  # the entry mirrors the whole file, the uncovered bytes included


def test_budget_evicts_the_least_recently_used(tmp_path, hpool):
    files = {}
    for name in "abcd":
        files[name] = str(tmp_path / f"{name}.bin")
        write(files[name], 2 * MiB, ord(name))
    with HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=6 * MiB + 1)) as cache:
        def load(name):
            s = hpool.create_slot(2 * MiB, name)
            cache.load(s, [(files[name], 0, 0, 2 * MiB)]).wait()
            s.close()

        for name in ("a", "b", "c", "a"):  # a is used again last: b is now the least recently used
            load(name)
        assert cache.usage_bytes() == 6 * MiB
        load("d")
        assert cache.usage_bytes() <= 6 * MiB + 1
        assert [cache.contains(files[x]) for x in "abcd"] == [True, False, True, True]
        assert cache.stats()["evicted"] == 1


def test_a_changed_file_is_not_served_and_its_old_entry_goes(tmp_path, cache, hpool):
    path, n = str(tmp_path / "ckpt.bin"), MiB
    write(path, n, 5)
    s = hpool.create_slot(n, "a")
    cache.load(s, [(path, 0, 0, n)]).wait()
    s.close()
    old_entry = cache.entry_path(path)
    new = write(path, n, 6)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later mtime, whatever the clock
    s = hpool.create_slot(n, "b")
    cache.load(s, [(path, 0, 0, n)]).wait()
    assert slot_bytes(s, 0, n) == new
    st = cache.stats()
    assert (st["fills"], st["hits"], st["invalidated"]) == (2, 0, 1)
    assert not os.path.exists(old_entry) and cache.entry_path(path) != old_entry


def test_a_file_larger_than_the_budget_is_loaded_straight(tmp_path, hpool):
    path, n = str(tmp_path / "big.bin"), 3 * MiB
    data = write(path, n, 7)
    with HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=2 * MiB)) as cache:
        s = hpool.create_slot(n, "big")
        cache.load(s, [(path, 0, 0, n)]).wait()
        assert slot_bytes(s, 0, n) == data
        assert cache.stats()["bypassed"] == 1 and cache.usage_bytes() == 0


def test_a_failed_fill_leaves_no_entry_and_releases_its_lock(tmp_path, cache, hpool):
    path, n = str(tmp_path / "ckpt.bin"), MiB
    data = write(path, n, 8)
    s = hpool.create_slot(n, "x")
    with pytest.raises(InvalidArgumentError):  # the range leaves the slot: the C++ job refuses to start
        cache.load(s, [(path, 0, 0, n), (path, 0, n, 4096)])
    assert not [x for x in os.listdir(cache.config.root) if x.endswith((".fill", ".bin"))]
    cache.load(s, [(path, 0, 0, n)]).wait()  # the lock was released: this fill does not wait
    assert slot_bytes(s, 0, n) == data and cache.stats()["fills"] == 1  # the refused one is not a fill


def test_a_cancelled_fill_is_deleted(tmp_path):
    # 1 KiB pieces and one loader thread: 65,536 steps (~0.15 s here), so the cancel lands mid-fill even when the
    # test thread is descheduled on a busy VM; with 256 KiB pieces the fill often ended first, and the test then
    # checked nothing about the cancel.
    path, n = str(tmp_path / "ckpt.bin"), 64 * MiB
    write(path, n, 9)
    config = HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=2 * n, threads=1, chunk_bytes=1 << 10)
    with HostCheckpointCache(config) as cache, PagePool(n, page_bytes=PAGE, prefault=False) as pool:
        s = pool.create_slot(n, "x")
        job = cache.load(s, [(path, 0, 0, n)])
        job.cancel()
        with pytest.raises(CancelledError) as ei:
            job.wait(timeout_s=60)
        assert ei.value.done_bytes < n
        assert not [x for x in os.listdir(cache.config.root) if x.endswith((".fill", ".bin"))]
        assert s.mapped_pages == 0 and not cache.contains(path) and cache.stats()["fills"] == 0
        cache.load(s, [(path, 0, 0, n)]).wait(timeout_s=60)  # the fill's lock was released: this one fills
        assert cache.stats()["fills"] == 1 and cache.contains(path)


def test_a_source_outside_the_file_is_refused_for_a_fill_and_for_a_hit(tmp_path, cache, hpool):
    """A hit reads the entry by pointer, where the C++ loader cannot check bounds (found in review): the range is
    checked against the file first, on a fill and on a hit, and the fill is let go of (no .fill, lock free)."""
    path, n = str(tmp_path / "ckpt.bin"), MiB
    data = write(path, n, 11)
    s = hpool.create_slot(2 * n, "x")
    with pytest.raises(InvalidArgumentError, match="outside the file"):
        cache.load(s, [(path, 4096, 0, n)])  # a fill: one page past the end
    assert not [x for x in os.listdir(cache.config.root) if x.endswith((".fill", ".bin"))]
    cache.load(s, [(path, 0, 0, n)]).wait()  # fills (its lock was let go)
    with pytest.raises(InvalidArgumentError, match="outside the file"):
        cache.load(s, [(path, n - 10, n, 4096)])  # a hit
    assert slot_bytes(s, 0, n) == data and cache.stats()["fills"] == 1  # a refused fill is not counted


def test_a_cached_load_dropped_without_wait_lets_go_of_its_entries(tmp_path, cache, hpool):
    """Found in review: a job dropped without wait() deleted its fill but kept the entry's users count and mapping
    (and on cuda its DMA registration) for the life of the process. Now it stops the job, then lets go of both."""
    import gc

    path, n = str(tmp_path / "ckpt.bin"), MiB
    data = write(path, n, 12)
    s = hpool.create_slot(n, "x")
    job = cache.load(s, [(path, 0, 0, n)])
    entry = job._fills[0][0]
    del job
    gc.collect()
    assert entry.users == 0 and entry.mm is None
    assert not [x for x in os.listdir(cache.config.root) if x.endswith((".fill", ".bin"))]
    t = hpool.create_slot(n, "y")
    cache.load(t, [(path, 0, 0, n)]).wait()  # fills again: nothing of the dropped one is left in the way
    assert slot_bytes(t, 0, n) == data


def test_only_file_sources(cache, hpool):
    s = hpool.create_slot(PAGE, "x")
    with pytest.raises(InvalidArgumentError, match="file path"):
        cache.load(s, [(b"abc", 0, 0, 3)])


#: The cuda path on csrc/testing/fake_libcuda.c (device memory is host memory there, so bytes can be read back):
#: the entry is registered once, every copy into the slot is a DMA from registered memory (none from a staging
#: buffer), for the fill and for hits, and close() unregisters it.
FAKE_CUDA = r"""
import ctypes, sys
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache
fake = ctypes.CDLL("libcuda.so.1")
fake.fake_cuda_stat.restype = ctypes.c_long
st = fake.fake_cuda_stat
REGS, FROM_REGISTERED, FROM_OTHER = 5, 6, 7
root, path = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
n, PB = len(data) - 100, 64 << 10
with PagePool(-(-n // PB) * PB, backend="cuda", page_bytes=PB) as pool, \
        HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=1 << 30, chunk_bytes=256 << 10)) as cache:
    for expect in ("fills", "hits"):
        s = pool.create_slot(n, expect)
        cache.load(s, [(path, 100, 0, n)]).wait()
        assert ctypes.string_at(s.base_address, n) == data[100:], expect
        assert cache.stats()[expect] == 1 and st(REGS) == 1, (cache.stats(), st(REGS))
        s.close()
    assert st(FROM_REGISTERED) >= 2 * (n // (256 << 10)) and st(FROM_OTHER) == 0, (st(FROM_REGISTERED), st(FROM_OTHER))
    s = pool.create_slot(n, "plain")  # a plain load of the same file goes through the staging buffers
    s.load([(path, 100, 0, n)]).wait()
    assert st(FROM_OTHER) > 0 and ctypes.string_at(s.base_address, n) == data[100:]
    s.close()
assert st(REGS) == 0, st(REGS)  # cache.close() unregistered the entry
print("fake cuda cache OK")
"""


#: Found in review: a fill whose cuMemHostRegister failed kept its lock and .fill file (the entry was registered
#: before the fill was recorded for the abort), so every other worker waited lock_timeout_s for it.
FAKE_CUDA_REGISTER_FAILS = r"""
import ctypes, os, sys
from warmserve.errors import DriverError
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache
fake = ctypes.CDLL("libcuda.so.1")
root, path = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
n, PB = len(data), 64 << 10
with PagePool(-(-n // PB) * PB, backend="cuda", page_bytes=PB) as pool, \
        HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=1 << 30, lock_timeout_s=5.0)) as cache:
    s = pool.create_slot(n, "s")
    fake.fake_cuda_fail_host_registers(1)
    try:
        cache.load(s, [(path, 0, 0, n)])
        raise AssertionError("the registration did not fail")
    except DriverError:
        pass
    assert not [x for x in os.listdir(root) if x.endswith((".fill", ".bin"))], os.listdir(root)
    cache.load(s, [(path, 0, 0, n)]).wait()  # the lock was let go: no 5 s wait, no TimeoutError
    assert ctypes.string_at(s.base_address, n) == data and cache.stats()["fills"] == 1, cache.stats()
    s.close()
print("fake cuda cache OK")
"""


def _run_on_fake_driver(tmp_path, scenario: str, nbytes: int) -> None:
    import shutil
    from pathlib import Path

    from warmserve.memory import cuda_compiled

    root_dir = Path(__file__).resolve().parents[3]
    cuda_h = next((d for d in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda")
                   if d and (Path(d) / "include" / "cuda.h").exists()), None)
    if not cuda_compiled() or cuda_h is None or shutil.which("cc") is None:
        pytest.skip("needs the cuda backend compiled in, cuda.h and a C compiler")
    lib = tmp_path / "libcuda.so.1"
    subprocess.run(["cc", "-std=c11", "-O1", "-Wall", "-Werror", "-shared", "-fPIC", f"-I{cuda_h}/include",
                    str(root_dir / "csrc/testing/fake_libcuda.c"), "-o", str(lib)], check=True)
    path = tmp_path / "ckpt.bin"
    write(path, nbytes, 10)
    env = dict(os.environ, LD_LIBRARY_PATH=f"{tmp_path}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    r = subprocess.run([sys.executable, "-c", scenario, str(tmp_path / "cache"), str(path)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fake cuda cache OK" in r.stdout


def test_cuda_path_dmas_from_the_registered_entry_on_a_fake_driver(tmp_path):
    _run_on_fake_driver(tmp_path, FAKE_CUDA, 3 * MiB + 100)


def test_a_fill_whose_dma_registration_fails_lets_go_of_its_lock_on_a_fake_driver(tmp_path):
    _run_on_fake_driver(tmp_path, FAKE_CUDA_REGISTER_FAILS, 2 * MiB)


def test_a_chunk_size_the_loader_refuses_is_refused_by_the_config(tmp_path):
    """Found in review: chunk_bytes below the loader's minimum built a cache whose every fill then failed."""
    from warmserve.memory.pool import MIN_LOAD_CHUNK_BYTES

    with pytest.raises(InvalidArgumentError, match="minimum"):
        HostCheckpointCache(HostCacheConfig(root=str(tmp_path), capacity_bytes=1 << 30,
                                            chunk_bytes=MIN_LOAD_CHUNK_BYTES - 1))
    HostCheckpointCache(HostCacheConfig(root=str(tmp_path), capacity_bytes=1 << 30,
                                        chunk_bytes=MIN_LOAD_CHUNK_BYTES)).close()
