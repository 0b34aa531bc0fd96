"""A cached load that is cancelled mid-fill lets go of the fill's memory at once (found in review: the cancelled
C++ job kept the entry's array exported, so the deleted fill stayed mapped, its host memory outside the cache's
budget, until a garbage collection happened to free the job)."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from warmserve.errors import CancelledError
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

PAGE = 4096
N = 64 << 20


def _deleted_fills(root: str) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(root) and target.endswith("(deleted)"):
            out.append(target)
    maps = open("/proc/self/maps").read().splitlines()
    return out + [m for m in maps if root in m and "(deleted)" in m]


def test_a_fill_cancelled_mid_copy_leaves_nothing_mapped(tmp_path):
    path = tmp_path / "ckpt.bin"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, N, dtype=np.uint8).tobytes())
    root = str(tmp_path / "cache")
    gc.disable()  # what is freed must be freed by the cancel, not by a collection
    try:
        with PagePool(N, page_bytes=PAGE, prefault=False) as pool, \
                HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=4 * N, chunk_bytes=1024,
                                                    threads=1)) as cache:
            job = cache.load(pool.create_slot(N, "s"), [(str(path), 0, 0, N)])
            entry = job._fills[0][0]
            job.cancel()  # 65536 chunks of 1 KiB: the copies are still running
            with pytest.raises(CancelledError):
                job.wait(timeout_s=60)
            assert entry.users == 0 and not os.path.exists(entry.path[: -len(".bin")] + ".fill")
            assert _deleted_fills(root) == [], "the cancelled fill is still mapped"
            assert job.progress[1] == N  # the job still answers what it did
    finally:
        gc.enable()
