"""The fill locks of one load, and the entries it reads (found in review): two workers loading the same files listed
in opposite orders must not each hold one fill lock and wait for the other's; a load must not evict an entry it
reads later."""
import subprocess
import sys
import textwrap

import numpy as np
import torch

from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

MiB = 1 << 20

# One worker process: loads [first, second] through the cache. Hooks make the interleaving deterministic: after its
# first entry is acquired, a worker waits until the other worker has acquired its first entry too, or is waiting
# for a fill lock. A load that takes the locks in the order its sources come then holds one lock in each worker and
# waits for the other's (CacheBusyError after lock_timeout_s); one that takes them in one global order lets the
# second worker wait for the first worker's whole load, then serves it from the entries just published.
WORKER = textwrap.dedent(r"""
    import fcntl, os, sys, time
    import numpy as np, torch
    from warmserve.memory import PagePool
    from warmserve.memory import host_cache as hc
    root, first, second, me, other = sys.argv[1:6]
    orig_acquire, orig_wait = hc.HostCheckpointCache._acquire, hc.flock_wait
    calls = [0]
    def acquire(self, *a, **k):
        r = orig_acquire(self, *a, **k)
        calls[0] += 1
        if calls[0] == 1:
            open(me + ".holds", "w").close()
            deadline = time.monotonic() + 60
            while not (os.path.exists(other + ".holds") or os.path.exists(other + ".waits")):
                assert time.monotonic() < deadline, "the other worker never got to its first entry"
                time.sleep(0.002)
        return r
    def wait(fd, deadline, timeout_s, what, stop=None):
        if what.startswith("the cache entry"):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                open(me + ".waits", "w").close()
        return orig_wait(fd, deadline, timeout_s, what, stop)
    hc.HostCheckpointCache._acquire, hc.flock_wait = acquire, wait
    pool = PagePool(1024 * 4096, page_bytes=4096, prefault=False)
    cache = hc.HostCheckpointCache(hc.HostCacheConfig(root=root, capacity_bytes=1 << 30, lock_timeout_s=10))
    n = os.path.getsize(first)
    slot = pool.create_slot(2 * n, "w")
    try:
        got = cache.load(slot, [(first, 0, 0, n), (second, 0, n, n)]).wait()
    except Exception as e:
        print("FAILED", type(e).__name__, str(e)[:200])
        sys.exit(1)
    want = open(first, "rb").read() + open(second, "rb").read()
    print("LOADED", got, slot.tensor(0, 2 * n, torch.uint8).numpy().tobytes() == want)
""")


def test_two_workers_loading_the_same_files_in_opposite_orders_both_load(tmp_path):
    rng = np.random.default_rng(3)
    a, b = str(tmp_path / "a.bin"), str(tmp_path / "b.bin")
    rng.integers(0, 256, MiB, dtype=np.uint8).tofile(a)
    rng.integers(0, 256, MiB, dtype=np.uint8).tofile(b)
    root = str(tmp_path / "cache")
    w1, w2 = str(tmp_path / "w1"), str(tmp_path / "w2")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, root, x, y, me, other], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for x, y, me, other in ((a, b, w1, w2), (b, a, w2, w1))]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, "\n".join(outs)
        assert f"LOADED {2 * MiB} True" in out, "\n".join(outs)
    with HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=1 << 30)) as cache:
        assert cache.contains(a) and cache.contains(b)


def test_a_load_never_evicts_an_entry_it_reads_later(tmp_path):
    """A miss listed before a cached file: making room for the miss's fill must not evict the cached file's entry
    (before the fix it did, and the load then read that file straight from disk)."""
    rng = np.random.default_rng(4)
    a, b = str(tmp_path / "a.bin"), str(tmp_path / "b.bin")
    rng.integers(0, 256, 6 * MiB, dtype=np.uint8).tofile(a)
    data_b = rng.integers(0, 256, 4 * MiB, dtype=np.uint8)
    data_b.tofile(b)
    with PagePool(4096 * 4096, page_bytes=4096, prefault=False) as pool, \
            HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=9 * MiB)) as cache:
        s = pool.create_slot(4 * MiB, "warm")
        assert cache.load(s, [(b, 0, 0, 4 * MiB)]).wait() == 4 * MiB
        s.close()
        assert cache.contains(b)
        # a's key may sort before or after b's: both orders are tried, by which file comes first in the sources
        for sources in ([(a, 0, 0, 6 * MiB), (b, 0, 6 * MiB, 4 * MiB)], [(b, 0, 6 * MiB, 4 * MiB), (a, 0, 0, 6 * MiB)]):
            before = cache.stats()
            s = pool.create_slot(10 * MiB, "both")
            assert cache.load(s, sources).wait() == 10 * MiB
            st = cache.stats()
            assert cache.contains(b), st
            assert st["evicted"] == before["evicted"], st
            assert st["hits"] == before["hits"] + 1, st  # b served from the cache
            assert st["bypassed"] == before["bypassed"] + 1, st  # a does not fit beside b: straight from the file
            assert s.tensor(6 * MiB, 4 * MiB, torch.uint8).numpy().tobytes() == data_b.tobytes()
            s.close()
