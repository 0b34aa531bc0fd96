"""The host checkpoint cache: checkpoint files kept in host memory shared by the workers of one machine.

The role ServerlessLLM's checkpoint store plays. Each cached file is one file under a tmpfs directory
(``/dev/shm/warmserve-ckpt`` by default) holding the checkpoint file's bytes as they are on disk, named by a
hash of the checkpoint's real path and a hash of its (size, mtime_ns, ctime_ns, inode, device): a rewritten
checkpoint gets a new name, so a stale entry is never served (the old one is removed when the new one is filled). Every
worker process maps the same entry (MAP_SHARED), so the bytes are in host memory once per machine.

Loads. ``cache.load(slot, sources)`` takes the same (path, file_offset, slot_byte_offset, nbytes) sources as
``slot.load`` and returns a LoadJob:

- hit: the entry is mapped (once per process) and, on a cuda pool, registered for DMA (cuMemHostRegister,
  portable; once per process); C++ loader threads, each with its own stream, copy from it into the slot with
  cuMemcpyHtoDAsync straight from the cache (no staging buffer, no CPU copy). On the host backend it is one
  memcpy from the cache into the slot's pages. The checkpoint file is not opened.
- miss: the entry is created (fallocate: a tmpfs that cannot hold it fails now, not with SIGBUS later), mapped
  and registered, and the loader threads read each piece of the file into the entry and copy it into the slot
  from there, so reading piece k+1 overlaps copying piece k (the fill is pipelined). File bytes no source covers
  (the safetensors header; a tensor-parallel rank's other ranks' shards) are read into the entry by a Python
  thread beside the job. When both end well, the entry is published (an atomic rename); a failed or cancelled
  fill is deleted (a fill whose gaps alone failed too, with a warning: the slot's bytes all landed).

Concurrency. A fill holds an exclusive flock on ``<entry>.lock`` until it is published or deleted; a second
worker asking for the same checkpoint waits on that lock (``lock_timeout_s``) and then maps the published entry
instead of reading the file. A load takes the fill locks of its files in one order (by key) and holds them until
it ends, so two loads of the same files never wait for each other in a cycle. Eviction and the budget check run
under one flock on ``<root>/.lock``. Lock files are never deleted (removing one while another worker is about to
lock it would let two fill the same entry).

Eviction. Least recently used first (each use sets the entry's atime), until the entries and fills in progress fit
``capacity_bytes``, never an entry the same load reads; a budget lowered since the entries were made (a restart with
a smaller one) is enforced when the cache is made and at each load, hits too. Evicting unlinks the entry; the memory
is freed when the last worker unmaps it: the evicting one at once (or when its loads reading it end), the others at
the start of their next load (also when it has been filled again since: mappings are checked by inode). A fill whose
lock nobody holds was left by a worker that died mid-fill: eviction unlinks it (``stats()["orphans"]``). A file
larger than the budget, one that does not fit beside the fills in progress (not evictable: a sharded checkpoint's
load starts every shard's fill) and the entries the load reads, or one the tmpfs or host memory has no room for, is
loaded straight from the file (``stats()["bypassed"]``; the first of each kind but the second with a warning), as is
one the cache cannot make or lock a file for (any other error of the filesystem: a lock file or entry of another
user, a quota, a file size limit), with a warning each time. An entry another user published is not trusted:
loaded straight from the file, theirs left alone (an entry of this user's that it may only read is mapped read-only,
its copies staged). An entry whose size is not the checkpoint's (cut short) is unlinked under its fill lock and
filled again. The directory must be this user's own, one it can make files in:
``HostCheckpointCache()`` checks.

Caveat. The key is the file's metadata, not its contents. The ctime in it is set by the kernel alone, on every
write, rename, utime and re-creation, so a file rewritten in place with its old mtime put back (``os.utime``), or
replaced by an archive extracted with a fixed mtime that got the old inode back, gets a new key (found in review:
both were served stale). Changing only the file's mode or owner (which also sets the ctime) fills it again.

No file under the directory is opened through a symlink, and a fill is made anew (O_EXCL). A tmpfs too small for
an entry evicts least recently used entries not in use and tries once more, else the file is read (one WARNING per
cache); so is a file whose fill lock, or the index lock a fill takes, other workers hold past ``lock_timeout_s``,
one for all of a load's waits (a WARNING; found in review: a 503, and n files' waits took up to 2n times it).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from typing import Callable, Iterable

from warmserve.errors import InvalidArgumentError, WarmServeError
from warmserve.memory.cache_entry import CacheBusyError, CacheEntry, flock_wait, open_published, unlink_if_there
from warmserve.memory.cache_files import HostCacheConfig  # noqa: F401  (the cache's config, imported from here)
from warmserve.memory.cache_files import ROOT_MODE, check_root as _check_root, create_fill, entry_key, evict_until, \
    evict_over_budget, fill_memory_room, fs_free_bytes, no_memory_warning, no_room_warning, open_lock, scan, \
    over_budget_warning, shared_budget_warning, stat_source
from warmserve.memory.cache_load import CachedLoadJob
from warmserve.memory.loader import LoadJob
from warmserve.memory.pool import _count

log = logging.getLogger("warmserve.memory")


class HostCheckpointCache:
    """Checkpoint files in shared host memory, loaded into slots by DMA (see the module docstring)."""

    def __init__(self, config: HostCacheConfig = HostCacheConfig()):
        if not isinstance(config, HostCacheConfig):
            raise InvalidArgumentError(f"config must be a HostCacheConfig, not {type(config).__name__}. Fix: "
                                       "HostCheckpointCache(HostCacheConfig(root=..., capacity_bytes=...))")
        self.config = config
        _check_root(config.root)
        self._mu = threading.Lock()
        self._entries: dict[str, CacheEntry] = {}
        #: Counts close() calls: a fill started before one is not added to the mappings close() let go of.
        self._epoch = 0
        #: The warnings given so far (each once per cache): "room" (a filesystem too small for an entry), "memory"
        #: (host memory too short for an entry on a memory-backed filesystem), "budget" (a file larger than the
        #: whole budget); one does not silence another.
        self._said: set[str] = set()
        self._stats = {"hits": 0, "fills": 0, "bypassed": 0, "evicted": 0, "invalidated": 0, "orphans": 0,
                       "bytes_from_cache": 0, "bytes_filled": 0}
        self._enforce_budget(set())  # the directory may have been filled under a larger budget

    # ---------------------------------------------------------------- queries
    def stats(self) -> dict:
        """This process's counters: hits (entries mapped without reading the file), fills (entries filled and
        published; a failed or cancelled fill is not one), bypassed (loaded straight from the file), evicted and
        invalidated (entries this process unlinked), orphans (fills of dead workers this process unlinked),
        bytes_from_cache, bytes_filled (of published fills); and usage_bytes (all workers' entries) and
        capacity_bytes."""
        with self._mu:
            out = dict(self._stats)
        out["usage_bytes"] = self.usage_bytes()
        out["capacity_bytes"] = self.config.capacity_bytes
        return out

    def usage_bytes(self) -> int:
        """Bytes of every entry and fill in progress under root (all workers)."""
        return sum(size for _, size, _ in self._scan())

    def entry_path(self, path: str) -> str:
        """The cache file that holds `path` as it is now (it may not exist yet). InvalidArgumentError when `path`
        names no file that can be read."""
        st = stat_source(os.fspath(path), "entry_path")  # first: realpath() too fails untyped on a NUL
        return os.path.join(self.config.root, self._key(os.path.realpath(path), st) + ".bin")

    def contains(self, path: str) -> bool:
        """Whether the checkpoint file `path`, as it is now, is cached: False when there is no such file."""
        try:
            return os.path.exists(self.entry_path(path))
        except InvalidArgumentError as e:
            if getattr(e, "errno", None) in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise

    # ---------------------------------------------------------------- loading
    def load(self, slot, sources: Iterable[tuple], *, progress: Callable[[int, int], None] | None = None,
             stop: threading.Event | None = None) -> LoadJob:
        """Like ``slot.load`` for file sources (path, file_offset, slot_byte_offset, nbytes), through the cache.
        Returns with a running LoadJob once its entries are mapped, after waiting (up to ``lock_timeout_s`` in all)
        for other workers' fills of the same files: call it off a thread that must stay responsive (a worker's load
        thread does). ``stop`` set during that wait: CancelledError. ``wait()`` publishes the entries it filled."""
        # Grouped by cache key, not by spelling: "x.bin", "./x.bin" and a symlink to it are one entry, whose fill
        # lock a second group would wait on while this same load holds it (lock_timeout_s, then TimeoutError_).
        by_key: dict[str, list[tuple[int, int, int]]] = {}
        order: list[tuple[str, str, os.stat_result]] = []  # (key, the path as first given, its stat)
        for i, src in enumerate(sources):
            if not isinstance(src, tuple) or len(src) != 4 or not isinstance(src[0], (str, os.PathLike)):
                raise InvalidArgumentError(f"cache load source {i} must be (path, file_offset, slot_byte_offset, "
                                           "nbytes) with a file path")
            p = os.fspath(src[0])
            st = stat_source(p, f"cache load source {i}")  # typed, as slot.load's (found in review: bare errors)
            key = self._key(os.path.realpath(p), st)
            if key not in by_key:
                by_key[key] = []
                order.append((key, p, st))
            # checked as slot.load checks them (found in review: a float offset was truncated, a negative one
            # reached the C++ core as an untyped cast error)
            by_key[key].append(tuple(_count(f"cache load source {i} {what}", x)
                                     for what, x in zip(("file_offset", "slot_byte_offset", "nbytes"), src[1:])))
        cuda = slot.pool.backend == "cuda"
        device = slot.pool.device
        # made again if it went (found in review: someone cleaning /dev/shm made every later load fail untyped)
        try:
            os.makedirs(self.config.root, ROOT_MODE, exist_ok=True)  # this user's alone (cache_files.create_fill)
        except OSError:  # nor can its files be made: each is loaded straight from the file (_acquire)
            pass
        self._sweep()
        self._enforce_budget(set(by_key))
        specs, fills, used, hits, gaps = [], [], [], [], []
        # Every entry the load reads is off limits to the evictions of its own fills from the start, not only those
        # acquired so far (found in review: a miss listed before a cached file evicted that file's entry, which the
        # load then read straight from the file).
        busy = set(by_key)
        deadline = time.monotonic() + self.config.lock_timeout_s  # one for all the load's waits for locks
        try:
            # Fill locks are taken in one global order, by key, and held until the load ends: two loads of the same
            # files listed in opposite orders would otherwise each hold one and wait for the other's, until
            # lock_timeout_s (found in review: CacheBusyError for both).
            for key, p, st in sorted(order, key=lambda o: o[0]):
                ranges = by_key[key]
                entry, lock_fd = self._acquire(p, key, st.st_size, busy, stop, deadline)
                if entry is None:  # bypassed: straight from the file (bytes: the name may not be UTF-8, Slot.load)
                    specs += [(os.fsencode(p), 0, None, fo, so, n) for fo, so, n in ranges]
                    continue
                used.append(entry)
                if lock_fd is not None:  # before anything that can raise: the handler below aborts the fill (its
                    fills.append((entry, lock_fd))  # lock and .fill file), which other workers would wait 600 s on
                for fo, so, n in ranges:  # a hit reads the entry by pointer, where nothing else checks bounds
                    if fo < 0 or n < 0 or fo + n > entry.size:
                        raise InvalidArgumentError(
                            f"cache load source ({p!r}, {fo}, {so}, {n}): bytes [{fo}, {fo + n}) are outside the "
                            f"file's {entry.size} bytes", path=p, file_offset=fo, nbytes=n)
                if cuda:
                    entry.register(device)
                if lock_fd is None:
                    specs += [(None, entry.ptr, entry.arr, fo, so, n, 0, entry.pinned) for fo, so, n in ranges]
                    hits.append(sum(n for _, _, n in ranges))
                else:
                    gaps.append((p, entry, ranges))
                    specs += [(os.fsencode(p), 0, entry.arr, fo, so, n, entry.ptr, entry.pinned)
                              for fo, so, n in ranges]
            job = slot._start_load(specs, self.config.threads, self.config.chunk_bytes)
            for n in hits:  # counted once the load has started (found in review: refused loads counted as hits)
                self._count(hits=1, bytes_from_cache=n)
        except BaseException:
            for entry, lock_fd in fills:
                self._abort_fill(entry, lock_fd)
            self._done_with([e for e in used if all(e is not f for f, _ in fills)])
            raise
        cached = CachedLoadJob(job, progress, self, fills, used)
        if gaps:
            cached._start_gaps(gaps)
        return cached

    def close(self) -> None:
        """Let go of this process's mappings (and DMA registrations). The entries stay for other workers. An entry
        a running load still reads is let go of when that load ends (never unregistered under a DMA)."""
        with self._mu:
            self._epoch += 1
            entries, self._entries = list(self._entries.values()), {}
            idle = []
            for e in entries:
                e.stale = True
                if not e.users:
                    idle.append(e)
        for e in idle:
            e.release()

    def __enter__(self) -> HostCheckpointCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    @staticmethod
    def _key(real: str, st: os.stat_result) -> str:
        return entry_key(real, st)

    def _count(self, **kw) -> None:
        with self._mu:
            for k, v in kw.items():
                self._stats[k] += v

    def _scan(self) -> list[tuple[str, int, int]]:
        """(file name, bytes, last use in ns) of every entry (.bin) and fill in progress (.fill)."""
        return scan(self.config.root)

    def _touch(self, bin_path: str) -> None:
        """Mark an entry used now (LRU order is atime order)."""
        try:
            st = os.lstat(bin_path)
            os.utime(bin_path, ns=(time.time_ns(), st.st_mtime_ns), follow_symlinks=False)
        except OSError:  # gone, or another user's entry (found in review: EPERM failed the hit): LRU order only
            pass

    def _mapped(self, key: str, bin_path: str) -> CacheEntry | None:
        """This process's mapping of a published entry, if it still names the file under bin_path, at its size."""
        with self._mu:
            e = self._entries.get(key)
            if e is None:
                return None
            try:
                st = os.stat(bin_path)
                alive = (st.st_dev, st.st_ino) == e.file_id and st.st_size == e.size  # not cut short since
            except FileNotFoundError:
                alive = False
            if alive:
                e.users += 1
                return e
        self._let_go(key, e)  # evicted (maybe filled again) by some worker: let go once no load reads it
        return None

    def _let_go(self, key: str, e: CacheEntry | None = None) -> None:
        """Drop this process's mapping of entry `key` (only if it is `e`, when given), at once or when the last load
        reading it ends: an unlinked entry's memory lives as long as a process maps it (found in review)."""
        with self._mu:
            cur = self._entries.get(key)
            if cur is None or (e is not None and cur is not e):
                return
            del self._entries[key]
            cur.stale = True
            if cur.users:
                return
        cur.release()

    def _sweep(self) -> None:
        """Let go of this process's mappings of entries other workers have evicted (or filled again) since."""
        with self._mu:
            mapped = list(self._entries.items())
        for key, e in mapped:
            try:
                st = os.stat(e.path)
                alive = (st.st_dev, st.st_ino) == e.file_id and st.st_size == e.size
            except FileNotFoundError:
                alive = False
            if not alive:
                self._let_go(key, e)

    def _map_published(self, key: str, bin_path: str, size: int, fill_locked: bool = False) -> CacheEntry | None:
        """The published entry mapped, or None: there is none, or it is not ``size`` bytes (the checkpoint's: its
        key says so), which with ``fill_locked`` (this process holds the entry's fill lock, so nobody publishes
        it meanwhile) is unlinked to be filled again. Found in review: an entry cut short was mapped at its own
        size, and every later load of the checkpoint failed (bytes "outside the file") and never refilled it."""
        try:
            fd = open_published(bin_path)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():  # a bypass, theirs left alone (found in review: served as a hit)
                raise PermissionError(errno.EPERM, f"the entry is owned by uid {st.st_uid}, not by this process's "
                                      f"uid {os.geteuid()}: not trusted", bin_path)
            found = st.st_size
            if found != size:
                if fill_locked:  # an unlink refused (another user's entry) is a bypass, with the entry named
                    unlink_if_there(bin_path)
                    log.warning("host cache: entry %s holds %d bytes, its checkpoint %d: unlinked, filled again",
                                bin_path, found, size)
                    self._let_go(key)
                    self._count(invalidated=1)
                return None
            e = CacheEntry(key, bin_path, size, fd)
        finally:
            os.close(fd)
        with self._mu:
            old = self._entries.get(key)
            if old is not None:  # another thread of this process mapped it meanwhile
                old.users += 1
                e.release()
                return old
            self._entries[key] = e
            e.users += 1
        return e

    def _acquire(self, path: str, key: str, size: int, busy: set[str], stop: threading.Event | None,
                 deadline: float) -> tuple[CacheEntry | None, int | None]:
        """(mapped entry, None) on a hit; (entry being filled, lock fd) on a miss; (None, None) when bypassed.
        busy: keys of every entry the same load reads (not evicted to make room for this one). deadline: of the
        load's waits for locks (time.monotonic())."""
        root = self.config.root
        bin_path = os.path.join(root, key + ".bin")
        lock_path = os.path.join(root, key + ".lock")
        try:
            e = self._mapped(key, bin_path) or self._map_published(key, bin_path, size)
            if e is not None:
                self._touch(bin_path)
                return e, None
            lock_fd = open_lock(lock_path)
        except OSError as ex:  # an entry it may not read, a lock it may not make (another user's directory)
            return self._bypass(path, bin_path, ex)
        try:
            flock_wait(lock_fd, deadline, self.config.lock_timeout_s, f"the cache entry {bin_path} of {path}", stop)
            # filled by another worker while we waited; or cut short, unlinked here to be filled again
            e = self._map_published(key, bin_path, size, fill_locked=True)
            fill = None if e is not None else self._start_fill(key, path, size, busy, stop, deadline)
        except CacheBusyError as waited:
            # Found in review: the load failed (CacheBusyError, a 503) though the file was readable and the other
            # worker's fill was progressing (a large checkpoint from a slow disk; the other ranks of one model fill
            # the same files at once), and still did for the index lock. Either is read instead, as any bypass (the
            # error, in the warning, names the wait and the entry).
            os.close(lock_fd)
            return self._bypass(path, bin_path, waited)
        except OSError as ex:
            os.close(lock_fd)
            if isinstance(ex, WarmServeError):  # TimeoutError_ is an OSError
                raise
            return self._bypass(path, bin_path, ex)
        except BaseException:
            os.close(lock_fd)
            raise
        if e is not None:
            os.close(lock_fd)
            self._touch(bin_path)
            return e, None
        if fill is None:
            os.close(lock_fd)
            self._count(bypassed=1)
            return None, None
        return fill, lock_fd

    def _bypass(self, path: str, bin_path: str, err: OSError) -> tuple[None, None]:
        """(None, None), counted and logged: `path` is loaded straight from the file, as its entry cannot be
        made, locked or read (found in review: any error but ENOSPC and ENOMEM failed the load, untyped)."""
        log.warning("host cache: %s is loaded straight from the file: its entry %s cannot be used (%s)", path,
                    bin_path, err)
        self._count(bypassed=1)
        return None, None

    def _start_fill(self, key: str, path: str, size: int, busy: set[str], stop: threading.Event | None,
                    deadline: float) -> CacheEntry | None:
        """The entry `key` created and mapped for a fill, or None: loaded straight from the file."""
        root = self.config.root
        fill_path = os.path.join(root, key + ".fill")
        if size > self.config.capacity_bytes:
            self._say_once("budget", over_budget_warning(path, size, self.config.capacity_bytes))
            return None
        glock = open_lock(glock_path := os.path.join(root, ".lock"))
        try:
            flock_wait(glock, deadline, self.config.lock_timeout_s, f"the cache's index lock {glock_path}", stop)
            if not self._evict_locked(size, keep=key, path_hash=key.split("-")[0], busy=busy):
                return None
            if not self._memory_for(path, size, key, busy):
                return None
            fd = create_fill(fill_path)  # never through a symlink (found in review: one was written through)
            try:
                if size:
                    try:
                        os.posix_fallocate(fd, 0, size)
                    except OSError as ex:
                        if ex.errno not in (errno.ENOSPC, errno.ENOMEM):
                            raise
                        # The tmpfs is full, though the budget is not (found in review: every later checkpoint
                        # was read from the file for good, nothing evicted, nothing said): evict and try once more
                        evicted = self._evict_for_room(size, key, busy)
                        try:
                            os.posix_fallocate(fd, 0, size)
                        except OSError as ex2:
                            if ex2.errno not in (errno.ENOSPC, errno.ENOMEM):
                                raise
                            cap = self.config.capacity_bytes
                            self._say_once("room", no_room_warning(root, path, size, cap, evicted))
                            raise
                e = CacheEntry(key, os.path.join(root, key + ".bin"), size, fd, populate=False)
            except BaseException as ex:  # an interrupt too (found in review: it leaked fd and left the .fill)
                os.close(fd)
                try:
                    unlink_if_there(fill_path)
                except OSError:  # left as an orphan: the next eviction unlinks it, as its lock goes with ours
                    pass
                if isinstance(ex, OSError) and ex.errno in (errno.ENOSPC, errno.ENOMEM):
                    return None
                raise  # EFBIG, EDQUOT, EROFS...: _acquire bypasses the cache too, with a warning
            os.close(fd)
        finally:
            os.close(glock)  # closing the descriptor drops the flock
        with self._mu:
            e.users += 1
            e.epoch = self._epoch
        return e

    def _evict_locked(self, need: int, keep: str, path_hash: str, busy: set[str]) -> bool:
        """With the index lock held: unlink entries of the same checkpoint path made from another version of the
        file, then least recently used entries until `need` more bytes fit the budget. False, evicting none of the
        latter, when they cannot make room: fills in progress (this load's other shards, other workers') are not
        evictable, nor are the entries in `busy`, and the budget is a bound on host memory, not a hint (found in
        review: one load of a sharded checkpoint started every shard's fill and passed it)."""
        entries = self._scan()
        used = sum(size for _, size, _ in entries)
        for name, size, _ in list(entries):
            if name == keep + ".fill":  # a dead worker's, as we hold its lock: the fill about to start truncates it
                used -= size
            elif name.endswith(".fill") and not self._fill_live(name):
                used -= size  # unlinked as a dead worker's, or ended since the scan (published or deleted)
                late = self._published_since(name[: -len(".fill")] + ".bin", entries)
                if late is not None:  # counted, and evictable, as the entry it has become (found in review: it
                    entries.append(late)  # was taken for an orphan and never counted, and the budget was passed)
                    used += late[1]
        for name, size, _ in entries:
            if name.startswith(path_hash + "-") and name.endswith(".bin") and not name.startswith(keep):
                self._unlink_entry(name)
                used -= size
                self._count(invalidated=1)
        others = [e for e in entries if not e[0].startswith(path_hash + "-")]  # this path's: unlinked above
        if used - sum(size for name, size, _ in others if name.endswith(".bin") and name[: -len(".bin")] not in busy) \
                + need > self.config.capacity_bytes:
            return False
        self._count(evicted=evict_until(others, need, self.config.capacity_bytes - used, busy, self._unlink_entry))
        return True

    def _enforce_budget(self, busy: set[str]) -> None:
        """Evict least recently used entries not in use (not in ``busy``, read by no load of this process) until all fit
        ``capacity_bytes``, hits too: a budget lowered since the directory was filled (found in review: 6 MiB stayed
        under a 2 MiB budget while loads hit), or another deployment's larger one there (said once: cache_files)."""
        with self._mu:
            spare = busy | {key for key, e in self._entries.items() if e.users}
        evicted = evict_over_budget(self.config.root, self.config.capacity_bytes, spare, self._fill_live,
                                    self._unlink_entry)
        if evicted:
            self._count(evicted=evicted)
            self._say_once("shared", shared_budget_warning(self.config.root, self.config.capacity_bytes, evicted))

    def _evict_for_room(self, need: int, keep: str, busy: set[str], room: int | None = None) -> int:
        """With the index lock held, after the filesystem (or host memory: ``room``) refused ``need`` bytes: evict
        least recently used entries not in ``busy`` (nor ``keep``) until the free space (os.statvfs, or ``room``) plus
        the bytes evicted reach ``need`` (an entry another worker maps is freed when it lets go); how many."""
        room = fs_free_bytes(self.config.root) if room is None else room
        evicted = evict_until(self._scan(), need, room, busy | {keep}, self._unlink_entry)
        self._count(evicted=evicted)
        return evicted

    def _memory_for(self, path: str, size: int, key: str, busy: set[str]) -> bool:
        """With the index lock held: whether host memory can take the entry (``cache_files.fill_memory_room``), after
        evicting entries not in use for it; said once when it cannot (the load then reads the file)."""
        room, _ = fill_memory_room(self.config.root)
        if room is None or size <= room:
            return True
        evicted = self._evict_for_room(size, key, busy, room)
        room, what = fill_memory_room(self.config.root)
        if room is None or size <= room:
            return True
        self._say_once("memory", no_memory_warning(path, size, room, what, evicted))
        return False

    def _say_once(self, kind: str, warning: str) -> None:
        """Log a warning that the cache cannot hold an entry, once per cache and ``kind``."""
        with self._mu:
            said = kind in self._said
            self._said.add(kind)
        if not said:
            log.warning(warning)

    def _unlink_entry(self, name: str) -> None:
        """Unlink a published entry (``<key>.bin``) and let go of this process's own mapping of it."""
        unlink_if_there(os.path.join(self.config.root, name))
        self._let_go(name[: -len(".bin")])

    def _fill_live(self, fill_name: str) -> bool:
        """Whether a fill the scan listed is still in progress (its worker holds its lock until it is published or
        deleted). If nobody holds the lock, either its worker died mid-fill, and the fill, which would otherwise
        count against the budget forever, is unlinked here (an orphan), or it ended after the scan and its file is
        gone already (renamed onto its entry, or deleted), which is no orphan. Non-blocking, as the index lock is
        held here and a fill takes its own lock before the index lock: waiting would invert that order. No fill can
        start while the index lock is held, so a lock nobody holds is no fill about to start."""
        key = fill_name[: -len(".fill")]
        try:
            fd = open_lock(os.path.join(self.config.root, key + ".lock"))
        except OSError:  # a symlink planted as its lock, another user's: not ours to unlink, counted as live
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            if unlink_if_there(os.path.join(self.config.root, fill_name)):
                self._count(orphans=1)
            return False
        finally:
            os.close(fd)  # drops the flock

    def _published_since(self, bin_name: str, entries: list[tuple[str, int, int]]) -> tuple[str, int, int] | None:
        """(name, bytes, last use) of entry ``bin_name`` when it exists but the scan in ``entries`` missed it: a fill
        published between the scan and now."""
        if any(name == bin_name for name, _, _ in entries):
            return None
        try:
            st = os.stat(os.path.join(self.config.root, bin_name))
        except FileNotFoundError:
            return None
        return bin_name, st.st_size, st.st_atime_ns

    def _publish(self, entry: CacheEntry, lock_fd: int) -> None:
        """Rename the fill onto its entry; OSError only from the rename, before anything is done (found in review:
        an error after it, caught as an unpublished fill, closed the lock twice). After it nothing raises."""
        fill_path = entry.path[: -len(".bin")] + ".fill"
        os.rename(fill_path, entry.path)
        try:
            self._touch(entry.path)
        except OSError:  # LRU order only: the entry is published
            pass
        with self._mu:
            self._stats["fills"] += 1
            self._stats["bytes_filled"] += entry.size
            if entry.epoch != self._epoch:
                # close() ran during the fill: the cache let go of its mappings, and this one goes too (when the
                # load that filled it is done with it, _done_with) instead of outliving the closed cache
                entry.stale = True
            elif self._entries.setdefault(entry.key, entry) is not entry:
                # another thread of this process mapped the published file between the rename and here: that
                # mapping serves the entry, this one is let go of (and its DMA registration undone) when the load
                # that filled it is done with it (_done_with)
                entry.stale = True
        try:
            os.close(lock_fd)
        except OSError:  # Linux frees the descriptor (and the flock) whatever close says
            pass

    def _abort_fill(self, entry: CacheEntry, lock_fd: int) -> None:
        """Delete a fill that will not be published; its lock and mapping go whatever the unlink does (found in
        review: an unlink's OSError escaped before the lock was closed, and other workers waited on it)."""
        fill_path = entry.path[: -len(".bin")] + ".fill"
        try:
            unlink_if_there(fill_path)
        except OSError as e:  # left as an orphan: the next eviction unlinks it once its lock is free
            log.warning("host cache: the unpublished fill %s could not be deleted (%s): it is reclaimed later",
                        fill_path, e)
        finally:
            try:
                os.close(lock_fd)
            except OSError:  # Linux frees the descriptor (and the flock) whatever close says
                pass
            with self._mu:
                entry.users -= 1
            entry.release()

    def _done_with(self, entries: list[CacheEntry]) -> None:
        for e in entries:
            with self._mu:
                e.users -= 1
                release = e.stale and not e.users
            if release:
                e.release()
