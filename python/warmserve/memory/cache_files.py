"""The host checkpoint cache's configuration and file-level helpers (memory/host_cache.py): ``HostCacheConfig``, the
entry key of a checkpoint, the check of the cache directory, the opening of lock and fill files (never through a
symlink), and the words of the warning for a filesystem too small for an entry."""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass

from warmserve.errors import InvalidArgumentError, fmt_bytes
from warmserve.memory.pool import MAX_COUNT, MAX_THREADS, MIN_LOAD_CHUNK_BYTES

#: Flags of every open of a file under the cache directory: a symlink planted there (the directory may be shared,
#: e.g. /dev/shm) is never followed. Found in review: a fill opened a planted ``<key>.fill`` -> a file of the
#: user's own with O_CREAT|O_TRUNC and wrote the checkpoint over it.
NOFOLLOW = os.O_CLOEXEC | os.O_NOFOLLOW
#: Mode of the cache directory this code makes and of every entry: this user's alone (``create_fill``).
ROOT_MODE, ENTRY_MODE = 0o700, 0o600
#: The cache directory when none is named, while no other user holds it (``default_root``).
SHARED_ROOT = "/dev/shm/warmserve-ckpt"


def default_root(shared: str = SHARED_ROOT) -> str:
    """The cache directory of a server or worker that names none: ``shared`` when it is absent or this user's,
    else ``shared``-UID, this user's own. Found in review (two users of one machine, each `warmserve serve
    --host-cache-gib 0.5`): the first user's 0700 directory stopped the second's start with an error, however
    well it named the fix. The same answer in every process of one user, so a server's workers share one cache;
    a ``shared``-UID of another user is refused as any other directory of theirs is (``check_root``)."""
    try:
        st = os.lstat(shared)
    except FileNotFoundError:
        return shared
    except OSError:
        return f"{shared}-{os.geteuid()}"
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
        return shared
    return f"{shared}-{os.geteuid()}"


@dataclass(frozen=True)
class HostCacheConfig:
    """Where the cache lives and how it loads."""

    #: Directory of the entries, shared by the workers of one machine; a tmpfs, so entries are host memory.
    root: str = SHARED_ROOT
    #: Budget of all entries together (bytes); the least recently used are evicted to stay under it.
    capacity_bytes: int = 32 << 30
    #: Loader threads of a load (on cuda each has its own stream: that many DMAs in flight).
    threads: int = 4
    #: Bytes a loader thread copies at a time (one DMA, or one file read plus one copy during a fill).
    chunk_bytes: int = 32 << 20
    #: How long a worker waits for another worker's fill of the same checkpoint (seconds); then it reads the file.
    lock_timeout_s: float = 600.0

    def __post_init__(self):
        # Checked here, not at the first load (found in review: threads=2.5 was accepted, and every load then failed
        # with a bare TypeError from the C++ binding)
        _whole("capacity_bytes", self.capacity_bytes, 1, MAX_COUNT, "the budget in bytes, e.g. 32 << 30")
        _whole("threads", self.threads, 1, MAX_THREADS, "a whole number of loader threads, e.g. 4")
        _whole("chunk_bytes", self.chunk_bytes, MIN_LOAD_CHUNK_BYTES, MAX_COUNT,
               f"a whole number of bytes of at least the loader's minimum of {MIN_LOAD_CHUNK_BYTES} (default "
               f"{32 << 20})")
        t = self.lock_timeout_s
        # not >= 0: NaN too; an int past float's range failed at the first load, in flock_wait's arithmetic
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0 or (isinstance(t, int) and t > 1e300):
            raise InvalidArgumentError(f"HostCacheConfig.lock_timeout_s={t!r} ({type(t).__name__}) must be a "
                                       "non-negative number of seconds. Fix: e.g. 600.0", lock_timeout_s=t)


def _whole(name: str, value, lo: int, hi: int, fix: str) -> None:
    """InvalidArgumentError unless ``value`` is an int (not a bool, not a float) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidArgumentError(f"HostCacheConfig.{name}={value!r} ({type(value).__name__}) must be a whole "
                                   f"number in [{lo}, {hi}]. Fix: {fix}", **{name: value})


def entry_key(real: str, st: os.stat_result) -> str:
    """``<hash of the real path>-<hash of size, mtime, ctime, inode, device>``. The ctime is in it as nothing but the
    kernel sets it, on every write, rename, utime and re-creation (found in review: a checkpoint replaced by an
    archive extracted with a fixed mtime, which got the old inode back, kept its key and was served stale). The path
    is hashed as the file system's bytes: a UTF-8 name's are its UTF-8 encoding, and a name that is not UTF-8 (its
    odd bytes surrogate escapes in ``real``) neither fails to encode nor meets another name's escaped text."""
    ph = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    sh = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}".encode())
    return f"{ph}-{sh.hexdigest()[:16]}"


def stat_source(path, what: str) -> os.stat_result:
    """os.stat(path) of a checkpoint, refused typed as slot.load refuses it: InvalidArgumentError naming ``path`` (a
    missing file: ``errno`` ENOENT). Found in review: a NUL byte gave a bare ValueError, a missing file a bare
    FileNotFoundError, a lone surrogate a bare UnicodeEncodeError."""
    if ("\0" if isinstance(path, str) else b"\0") in path:  # open() would stop at it and name another file
        raise InvalidArgumentError(f"{what}: the path {path!r} has a NUL byte and names no file. Fix: the file's "
                                   "path without the NUL", path=repr(path))
    try:
        return os.stat(path)
    except OSError as e:
        raise InvalidArgumentError(f"{what}: cannot read {path!r}: {e.strerror}", path=path, errno=e.errno) from None
    except UnicodeEncodeError:  # a lone surrogate that no file name's bytes give
        raise InvalidArgumentError(f"{what}: {path!r} names no file: it holds a character no file name's bytes "
                                   "decode to", path=repr(path)) from None


def open_lock(path: str) -> int:
    """A descriptor of the lock file ``path`` (made if missing), never through a symlink (ELOOP)."""
    return os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600)


def create_fill(path: str) -> int:
    """A new, empty ``path`` for a fill, made by this call: a leftover (a dead worker's fill; something planted) is
    unlinked first, which the caller's fill lock makes safe, and the file is made with O_EXCL, so nothing another
    process put there meanwhile is written to. OSError when it cannot be (another user's leftover: EPERM)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    # 0600: the entry is a copy of the checkpoint's bytes, which may sit in a folder only this user can read, while
    # /dev/shm is every user's (found in review: entries were 0644 in a 0755 folder, and another user of the machine
    # read a checkpoint kept in a 0700 folder through the cache). The workers sharing the cache are this user's.
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, ENTRY_MODE)


def scan(root: str) -> list[tuple[str, int, int]]:
    """(file name, bytes, last use in ns) of every entry (.bin) and fill in progress (.fill) under ``root``."""
    out = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:  # the directory went (someone cleaned /dev/shm): nothing is cached
        return out
    for name in names:
        if name.endswith((".bin", ".fill")):
            try:
                st = os.lstat(os.path.join(root, name))  # a planted symlink counts as itself, not what it names
            except FileNotFoundError:
                continue
            out.append((name, st.st_size, st.st_atime_ns))
    return out


def evict_over_budget(root: str, capacity: int, spare: set[str], live, unlink) -> int:
    """Unlink (``unlink(name)``) the least recently used entries under ``root``, none whose key is in ``spare``, until
    the entries and the fills in progress (``live(name)``, which unlinks a dead worker's) fit ``capacity`` bytes, or
    none is left to unlink; how many it unlinked. A scan within the budget takes no lock. The index lock is only
    tried (a hit never waits on a fill's fallocate): held by another, or an unlink refused, the next load tries."""
    if sum(size for _, size, _ in scan(root)) <= capacity:
        return 0
    try:
        glock = open_lock(os.path.join(root, ".lock"))
    except OSError:  # the directory went: nothing to evict
        return 0
    evicted = 0
    try:
        fcntl.flock(glock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        entries = scan(root)
        used = sum(size for name, size, _ in entries if not name.endswith(".fill") or live(name))
        evicted = evict_until(entries, 0, capacity - used, spare, unlink)
    except OSError:  # BlockingIOError: the lock is held
        pass
    finally:
        os.close(glock)  # drops the flock
    return evicted


def check_root(root: str) -> None:
    """InvalidArgumentError unless this process can make files in ``root`` (made if missing). Found in review: a
    directory of another user (the default is one path for every user of a machine) was accepted, and every
    load then failed with an untyped PermissionError. Nor one of another user this process can write (found in
    review: a world-writable /dev/shm/warmserve-ckpt made first by another user was accepted, and that user's
    entries served; their symlinks followed)."""
    try:
        os.makedirs(root, ROOT_MODE, exist_ok=True)
        st = os.stat(root)
        if st.st_uid != os.geteuid():
            raise InvalidArgumentError(
                f"host cache directory {root!r} is owned by uid {st.st_uid} with mode "
                f"{stat.S_IMODE(st.st_mode):o}, not by this process's uid {os.geteuid()}: another user could put "
                f"entries (weights) there that this process would serve. Fix: --host-cache-dir (HostCacheConfig.root)"
                f" a folder of your own on a tmpfs, e.g. /dev/shm/warmserve-ckpt-{os.geteuid()}", path=root,
                owner_uid=st.st_uid)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=root)
        os.close(fd)
        os.unlink(probe)
        _private_entries(root)
    except OSError as e:
        try:
            st = os.stat(root)
            owner = f", owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):o}"
        except OSError:
            owner = ""
        raise InvalidArgumentError(
            f"host cache directory {root!r}: this process (uid {os.geteuid()}) cannot make files in it "
            f"({e.strerror}{owner}). Fix: a directory of this user's own on a tmpfs, e.g. "
            f"/dev/shm/warmserve-ckpt-{os.geteuid()}", path=root) from None


def _private_entries(root: str) -> None:
    """Entries of this user's that others may read (published 0644 before ENTRY_MODE) made this user's alone."""
    for name, _, _ in scan(root):
        try:
            st = os.lstat(path := os.path.join(root, name))
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
                os.chmod(path, ENTRY_MODE, follow_symlinks=False)
        except (OSError, NotImplementedError):  # gone meanwhile; a chmod the filesystem refuses: left as it is
            pass


def no_room_warning(root: str, path: str, size: int, capacity: int, evicted: int) -> str:
    """The words of the warning for an entry the filesystem of ``root`` cannot hold (ENOSPC, ENOMEM) after
    ``evicted`` entries not in use were evicted for it."""
    try:
        vfs = os.statvfs(root)
        total, free = vfs.f_blocks * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize
        fs = f"{fmt_bytes(total)} with {fmt_bytes(free)} free"
    except OSError as e:
        total, fs = 0, f"size unknown ({e.strerror})"
    budget = f"the budget (--host-cache-gib) is {fmt_bytes(capacity)}"
    fix = (f"lower --host-cache-gib to at most the filesystem's size ({total / (1 << 30):.1f}), or give the cache "
           "a larger tmpfs (--host-cache-dir on one, or mount -o remount,size=... of this one)"
           if total and capacity > total else
           "free memory on that filesystem (other files there count against it), or give the cache a larger tmpfs "
           "(--host-cache-dir on one, or mount -o remount,size=... of this one)")
    return (f"host cache: no room on the filesystem of {root} for the entry of {path} ({fmt_bytes(size)}), also "
            f"after evicting {evicted} entries not in use: it is {fs}, while {budget}. This checkpoint, and any "
            f"later one that does not fit, is loaded straight from the file (said once). Fix: {fix}")



def over_budget_warning(path: str, size: int, capacity: int) -> str:
    """The words of the warning for a checkpoint file larger than the whole budget: it can never be cached (found
    in review: nothing was said, and the cache of a cluster whose every file was larger did nothing, unseen)."""
    return (f"host cache: {path} ({fmt_bytes(size)}) is larger than the cache's whole budget ({fmt_bytes(capacity)}):"
            " it is loaded straight from the file, as is any other file that large (said once). Fix: a budget of at "
            f"least {size / (1 << 30):.2f} GiB (--host-cache-gib, ClusterConfig.host_cache_bytes), or no cache")


def shared_budget_warning(root: str, capacity: int, evicted: int) -> str:
    """The words of the warning for entries evicted because the directory held more than this cache's budget:
    filled under a larger one, by an earlier run or by another deployment sharing ``root`` (found in review: a
    second server with a smaller --host-cache-gib on the default directory evicted every entry of the first one's at
    its start, and again at each of its loads, unsaid; the first one's loads then read their files)."""
    return (f"host cache {root}: {evicted} entries evicted to bring it within this cache's budget "
            f"({fmt_bytes(capacity)}): it held more, filled under a larger budget by an earlier run or by another "
            "deployment sharing this directory, which then loses its entries at each load here (said once). Fix: "
            "give each deployment of this machine its own --host-cache-dir (ClusterConfig.host_cache_dir), or the "
            "same --host-cache-gib")


#: Host memory a fill of a cache on a memory-backed filesystem leaves to the processes' own growth, bytes: a CPU
#: worker took 230-290 MB beyond its pool during a 2,000-4,000-token prefill (measured in review, 2026-12-06), and
#: two workers of a machine may prefill at once.
FILL_HEADROOM_BYTES = 512 << 20
#: Filesystems whose files are host memory (charged to the memory cgroup of the process that writes them).
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs", "hugetlbfs")
#: The mount table ``memory_backed`` reads.
MOUNTS = "/proc/self/mounts"


def memory_backed(root: str, mounts: str = MOUNTS) -> bool:
    """Whether ``root`` is on a filesystem whose files are host memory: the mount with the longest mount point that
    holds it (``mounts``, /proc/self/mounts)."""
    from warmserve.host_cpus import open_path_table, unescape_mount_path

    real, best, fstype = os.path.realpath(root), "", ""
    try:
        with open_path_table(mounts) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = unescape_mount_path(parts[1])
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, parts[2]
    except OSError:
        return False
    return fstype in MEMORY_FILESYSTEMS


def fill_memory_room(root: str) -> tuple[int | None, str]:
    """Host memory a new entry of the cache in ``root`` may take now, bytes (``pool.host_memory_room`` less
    FILL_HEADROOM_BYTES), and what bounds it; (None, "") where ``root`` is no memory or nothing says. A tmpfs
    fallocate checks no memory: past a cgroup's limit its OOM killer answers it with SIGKILL (found in review: fills
    under a limit killed their workers, which restarted into the same fills), past MemAvailable the machine's."""
    if not memory_backed(root):
        return None, ""
    from warmserve.memory.pool import host_memory_room

    room, what = host_memory_room()
    return (None, "") if room is None else (max(0, room - FILL_HEADROOM_BYTES), what)


def no_memory_warning(path: str, size: int, room: int, what: str, evicted: int) -> str:
    """The words of the warning for an entry host memory cannot take (``fill_memory_room``)."""
    return (f"host cache: the entry of {path} ({fmt_bytes(size)}) would pass the host memory left ({fmt_bytes(room)}, "
            f"{what}, less {fmt_bytes(FILL_HEADROOM_BYTES)} kept for the processes' own growth), also after "
            f"evicting {evicted} entries not in use: it is loaded straight from the file, as is any later one that "
            "does not fit (said once). Fix: a lower --host-cache-gib, or more memory for the workers (a higher "
            "memory limit of their container, fewer or smaller workers)")


def fs_free_bytes(root: str) -> int:
    """Free bytes of the filesystem of ``root`` (0 when unknown)."""
    try:
        vfs = os.statvfs(root)
    except OSError:
        return 0
    return vfs.f_bavail * vfs.f_frsize


def evict_until(entries: list[tuple[str, int, int]], need: int, room: int, spare: set[str], unlink) -> int:
    """Unlink least recently used published entries (``scan``'s (name, size, last use)) whose keys are not in
    ``spare`` until ``room`` plus the bytes evicted reach ``need``; how many were unlinked."""
    evicted = 0
    for _, name, size in sorted((t, name, size) for name, size, t in entries
                                if name.endswith(".bin") and name[: -len(".bin")] not in spare):
        if room >= need:
            break
        unlink(name)
        room += size
        evicted += 1
    return evicted
