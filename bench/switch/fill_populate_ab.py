"""A/B on the host backend: fills of 1 GiB through the host checkpoint cache with the fill's entry mapped
MAP_POPULATE (as before 2026-12-04) and not (CacheEntry(populate=False), what a fill does now), alternating,
5 each; the file is read from the page cache. Usage: python bench/switch/fill_populate_ab.py [FILE]
(default: a 1 GiB random file written to /tmp first). Entries go to fresh folders under /dev/shm."""
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

import warmserve.memory.host_cache as hc
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCheckpointCache
from warmserve.memory.cache_files import HostCacheConfig
GiB = 1 << 30
nbytes = GiB
n = nbytes // (2 << 20)
path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/warmserve-fill-ab.bin"
if not os.path.exists(path) or os.path.getsize(path) < nbytes:
    np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8).tofile(path)
with open(path, "rb") as f:  # into the page cache
    while f.read(64 << 20):
        pass
orig = hc.CacheEntry
def forced(populate):
    class E(orig):
        def __init__(self, *a, **k):
            if "populate" in k:  # a fill's entry (published ones are always populated)
                k["populate"] = populate
            super().__init__(*a, **k)
    return E
res = {"populate": [], "faults": []}
with PagePool(nbytes, backend="host") as pool:
    s = pool.create_slot(nbytes, "ab")
    for r in range(5):
        for name, pop in (("populate", True), ("faults", False)):
            hc.CacheEntry = forced(pop)
            root = tempfile.mkdtemp(prefix="ab-", dir="/dev/shm")
            with HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=2 * nbytes, threads=2)) as c:
                t = time.perf_counter()
                c.load(s, [(path, 0, 0, nbytes)]).wait()
                res[name].append(time.perf_counter() - t)
            s.unmap(0, n)
            shutil.rmtree(root, ignore_errors=True)
hc.CacheEntry = orig
for k, v in res.items():
    med = statistics.median(v)
    print(f"{k:9s} fill of 1 GiB: median {med:.3f} s = {nbytes / med / 1e9:.2f} GB/s  {[round(x, 3) for x in v]}")
print("after/before:", round(statistics.median(res['populate']) / statistics.median(res['faults']), 2), "x faster")
