"""The files of the host checkpoint cache (memory/host_cache.py) as one process sees them: an entry mapped and
registered for DMA, the wait for a worker's flock, the removal of a file that may be gone, and the bytes of a
checkpoint file that no load source covers, copied into an entry being filled."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
import time

import numpy as np

from warmserve import _C
from warmserve.errors import CancelledError, InvalidArgumentError, WarmServeError, fmt_bytes, register

#: How often a wait for another worker's flock tries again, seconds.
POLL_S = 0.01


class CacheEntry:
    """One cache file mapped in this process."""

    def __init__(self, key: str, path: str, size: int, fd: int, populate: bool = True):
        self.key, self.path, self.size = key, path, size
        st = os.fstat(fd)
        # Which file this mapping is: a worker that evicts and fills the entry again makes a new file under the
        # same name and size, and this process must not go on serving (and holding) the deleted one.
        self.file_id = (st.st_dev, st.st_ino)
        #: Mapped for writing: False for a published entry this user may only read (open_published).
        self.writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        # MAP_POPULATE: the page tables are built in one pass now rather than by a fault per 4 KiB in the copy
        # (the DMA registration would fault them in anyway). Not for a fill (populate False): there the pass runs
        # alone before any copy starts, where the faults are taken by the loader's copier threads side by side
        # with their copies: 1 GiB fills on the shared 2-core VM took a median 0.68-0.70 s populated against
        # 0.54-0.55 s (bench/switch/fill_populate_ab.py, 2026-12-04; the fallocate before, 0.23 s, in both).
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if self.writable else 0)
        self.mm = mmap.mmap(fd, size, flags, prot) if size else None
        self.arr = np.frombuffer(self.mm, dtype=np.uint8) if size else np.zeros(0, np.uint8)
        self.ptr = self.arr.ctypes.data if size else 0
        self.registered_device: int | None = None  # this process registered it (and unregisters it)
        self.pinned = False
        self.users = 0  # running loads that read it (guarded by the cache's lock)
        self.stale = False  # unlinked by an eviction or an invalidation: release when no load uses it
        self.epoch = 0  # HostCheckpointCache._epoch when its fill started: a close() since makes its publish stale

    def register(self, device: int) -> None:
        # A read-only mapping stays unregistered (cuMemHostRegister without its READ_ONLY flag wants writable
        # pages): its loads copy through the loader's staging buffer instead (pinned=False).
        if self.pinned or not self.size or not self.writable:
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


@register
class CacheBusyError(WarmServeError, TimeoutError):
    """Other workers held host cache locks (fills of the same checkpoints, the cache's index lock) past a load's
    ``lock_timeout_s``; the load reads the file instead, this in its WARNING. Not a TimeoutError_, which says that
    an operation still runs: a load that ends with this has ended (found in review: a worker polling its load took
    it for "not finished yet" and then reported the load cancelled). Fields: timeout_s, waited_for."""

    http_status = 503


def flock_wait(fd: int, deadline: float, timeout_s: float, what: str, stop: threading.Event | None = None) -> None:
    """Take the flock on ``fd`` by ``deadline`` (time.monotonic()): that of the whole load, whose waits for locks
    share one ``timeout_s`` (HostCacheConfig.lock_timeout_s; found in review: each wait had one of its own, and a
    load of n files waited up to 2n times it). Tried once even past it. ``stop`` set meanwhile: CancelledError."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if stop is not None and stop.is_set():
                raise CancelledError(f"cancelled while waiting for {what}") from None
            if time.monotonic() >= deadline:
                raise CacheBusyError(
                    f"the load waited its lock_timeout_s ({timeout_s} s) for locks other workers hold, the last "
                    f"{what} (a fill of a large checkpoint from a slow disk?). Fix: raise "
                    "HostCacheConfig.lock_timeout_s", timeout_s=timeout_s, waited_for=what) from None
            time.sleep(POLL_S)


def open_published(path: str) -> int:
    """A descriptor of the published entry ``path``: read-write, or read-only where this user may only read it (an
    entry another user published in a shared directory: found in review, a 0644 entry failed every hit with a
    PermissionError though the checkpoint was readable). A published entry is never written: its fill was.
    FileNotFoundError when there is none; ELOOP for a symlink, never followed (found in review: a symlink planted
    in a shared directory was mapped and served as the entry)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)


def unlink_if_there(path: str) -> bool:
    """Unlink ``path``; whether this call removed it (False: it was gone already)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


#: Most bytes one read of ``fill_gaps`` takes before it looks at its stop event again.
GAP_READ_BYTES = 64 << 20


def fill_gaps(path: str, entry: CacheEntry, ranges: list[tuple[int, int, int]],
              stop: threading.Event | None = None) -> None:
    """Copy the file bytes no source covers (the safetensors header, padding; a tensor-parallel rank's load
    covers its own shards only, so the other ranks' too) into the entry being filled. ``stop`` set: raises
    CancelledError at its next read."""
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
            while at < hi:
                if stop is not None and stop.is_set():
                    raise CancelledError(f"the fill of {path} was cancelled", path=path)
                f.seek(at)
                got = f.readinto(view[at:min(hi, at + GAP_READ_BYTES)])
                if not got:
                    raise InvalidArgumentError(
                        f"{path} ended at {at} bytes, {entry.size} ({fmt_bytes(entry.size)}) expected (the file "
                        "changed during the load?)", path=path, size_bytes=entry.size)
                at += got


class GapFill:
    """``fill_gaps`` of a load's fills on a thread beside the load's job (found in review: run first on the
    caller's thread, a tensor-parallel rank's load read every other rank's shards before its own copies began, and
    a worker's load call blocked for as long). ``failed`` lists (entry, error) for fills whose gaps were not read;
    ``stop`` cancels the rest."""

    def __init__(self, work: list[tuple[str, CacheEntry, list[tuple[int, int, int]]]]):
        self._work = work
        self.stop = threading.Event()
        self.failed: list[tuple[CacheEntry, BaseException]] = []
        # A daemon: it writes only into the fills' shared mappings, which a process that exits mid-fill leaves
        # as orphans that eviction removes (their locks go with the process).
        self._thread = threading.Thread(target=self._run, name="cache-gaps", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for path, entry, ranges in self._work:
            try:
                fill_gaps(path, entry, ranges, self.stop)
            except BaseException as e:  # noqa: BLE001 (reported to the job's wait, which settles the fill)
                self.failed.append((entry, e))

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the thread at most ``timeout_s``; True when it has ended."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
