"""The files of the host checkpoint cache (memory/host_cache.py) as one process sees them: an entry mapped and
registered for DMA, the wait for a worker's flock, the removal of a file that may be gone, and the bytes of a
checkpoint file that no load source covers, copied into an entry being filled."""

from __future__ import annotations

import fcntl
import mmap
import os
import time

import numpy as np

from warmserve import _C
from warmserve.errors import InvalidArgumentError, TimeoutError_, fmt_bytes

#: How often a wait for another worker's flock tries again, seconds.
POLL_S = 0.01


class CacheEntry:
    """One cache file mapped in this process."""

    def __init__(self, key: str, path: str, size: int, fd: int):
        self.key, self.path, self.size = key, path, size
        st = os.fstat(fd)
        # Which file this mapping is: a worker that evicts and fills the entry again makes a new file under the
        # same name and size, and this process must not go on serving (and holding) the deleted one.
        self.file_id = (st.st_dev, st.st_ino)
        # MAP_POPULATE: the page tables are built in one pass now rather than by a fault per 4 KiB in the copy
        # (the DMA registration would fault them in anyway).
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        self.mm = mmap.mmap(fd, size, flags, mmap.PROT_READ | mmap.PROT_WRITE) if size else None
        self.arr = np.frombuffer(self.mm, dtype=np.uint8) if size else np.zeros(0, np.uint8)
        self.ptr = self.arr.ctypes.data if size else 0
        self.registered_device: int | None = None  # this process registered it (and unregisters it)
        self.pinned = False
        self.users = 0  # running loads that read it (guarded by the cache's lock)
        self.stale = False  # unlinked by an eviction or an invalidation: release when no load uses it
        self.epoch = 0  # HostCheckpointCache._epoch when its fill started: a close() since makes its publish stale

    def register(self, device: int) -> None:
        if self.pinned or not self.size:
            return
        if _C.cuda_host_register(self.ptr, self.size, device):
            self.registered_device = device
        self.pinned = True

    def release(self) -> None:
        if self.registered_device is not None:
            _C.cuda_host_unregister(self.ptr, self.registered_device)
            self.registered_device = None
        self.pinned = False
        self.arr = None
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # a load job's keep-alive still exports it: the mapping goes with that job
                pass
            self.mm = None


def flock_wait(fd: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError_(
                    f"waited {timeout_s} s for {what}: another worker holds it (a fill of a large checkpoint from a "
                    "slow disk?). Fix: raise HostCacheConfig.lock_timeout_s", timeout_s=timeout_s) from None
            time.sleep(POLL_S)


def unlink_if_there(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fill_gaps(path: str, entry: CacheEntry, ranges: list[tuple[int, int, int]]) -> None:
    """Copy the file bytes no source covers (the safetensors header, padding) into the entry being filled."""
    spans = sorted((fo, fo + n) for fo, _, n in ranges if n)
    gaps, at = [], 0
    for lo, hi in spans:
        if lo > at:
            gaps.append((at, lo))
        at = max(at, hi)
    if at < entry.size:
        gaps.append((at, entry.size))
    if not gaps:
        return
    with memoryview(entry.mm) as view, open(path, "rb", buffering=0) as f:
        for lo, hi in gaps:
            at = lo
            while at < hi:  # one read returns at most about 2 GiB on Linux
                f.seek(at)
                got = f.readinto(view[at:hi])
                if not got:
                    raise InvalidArgumentError(
                        f"{path} ended at {at} bytes, {entry.size} ({fmt_bytes(entry.size)}) expected (the file "
                        "changed during the load?)", path=path, size_bytes=entry.size)
                at += got
