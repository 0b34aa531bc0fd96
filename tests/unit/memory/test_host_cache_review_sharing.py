"""The host checkpoint cache, found in review (r1-r5 in the reviewer's report): a checkpoint replaced by an archive
extracted with a fixed mtime (the inode reused) was served stale from the cache; a fill followed a symlink planted
as ``<key>.fill`` and overwrote the file it named; a full tmpfs sent every later checkpoint straight to the file for
good, with nothing evicted and nothing said; a worker waiting on another worker's slow fill failed its load
(CacheBusyError, a 503) though the file was readable; and another user's cache directory and entries were
trusted."""

from __future__ import annotations

import errno
import fcntl
import logging
import os

import pytest
import torch

from warmserve.errors import InvalidArgumentError
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

from test_host_cache import write  # this folder's checkpoint writer

PAGE = 4096
MiB = 1 << 20


def cfg(root, **kw) -> HostCacheConfig:
    return HostCacheConfig(root=str(root), **{"capacity_bytes": 1 << 30, "chunk_bytes": PAGE, **kw})


def load(cache, pool, path, n: int) -> bytes:
    """The bytes a load of all of ``path`` through ``cache`` puts in a slot."""
    slot = pool.create_slot(n, "s")
    try:
        cache.load(slot, [(str(path), 0, 0, n)]).wait()
        return slot.tensor(0, (n,), torch.uint8).numpy().tobytes()
    finally:
        slot.close()


# ------------------------------------------------------------------ 1. a checkpoint replaced, same size/mtime/inode
def test_a_checkpoint_replaced_with_its_old_mtime_and_inode_is_not_served_stale(tmp_path, hpool):
    """r1: an untar of a reproducible archive (fixed mtime) over the old checkpoint; ext4 hands the freed inode
    back. Played here by a rewrite in place with the old mtime put back: size, mtime, inode and device are all
    the old ones, only the ctime moved."""
    ck, n = tmp_path / "model.safetensors", MiB
    write(ck, n, 1)
    with HostCheckpointCache(cfg(tmp_path / "cache")) as cache:
        load(cache, hpool, ck, n)
        st = os.stat(ck)
        v2 = write(ck, n, 2)  # in place: the same inode
        os.utime(ck, ns=(st.st_atime_ns, st.st_mtime_ns))
        st2 = os.stat(ck)
        assert (st2.st_size, st2.st_mtime_ns, st2.st_ino, st2.st_dev) == (st.st_size, st.st_mtime_ns, st.st_ino,
                                                                         st.st_dev)
        assert load(cache, hpool, ck, n) == v2
        assert (cache.stats()["fills"], cache.stats()["hits"]) == (2, 0)


# ------------------------------------------------------------------ 2. symlinks planted in the cache directory
def test_a_fill_does_not_follow_a_symlink_planted_as_its_fill_file(tmp_path, hpool):
    """r4: ``<key>.fill`` -> a file of this user's; the fill opened it O_CREAT|O_TRUNC and wrote the checkpoint
    over it."""
    ck, n = tmp_path / "model.safetensors", MiB
    data = write(ck, n, 3)
    precious = tmp_path / "precious.txt"
    precious.write_bytes(b"the user's own data\n" * 10)
    root = tmp_path / "cache"
    with HostCheckpointCache(cfg(root)) as cache:
        fill = cache.entry_path(str(ck))[: -len(".bin")] + ".fill"
        os.symlink(precious, fill)
        assert load(cache, hpool, ck, n) == data
        assert precious.read_bytes() == b"the user's own data\n" * 10
        assert not os.path.islink(cache.entry_path(str(ck))) and cache.contains(str(ck))


def test_a_symlinked_entry_or_lock_is_not_followed(tmp_path, hpool):
    """An entry ``<key>.bin`` or lock ``<key>.lock`` that is a symlink: the load reads the file and the file the
    link names is left as it was (before: the entry was mapped through the link and served as a hit)."""
    ck, n = tmp_path / "model.safetensors", MiB
    data = write(ck, n, 4)
    other = tmp_path / "other.bin"
    other_bytes = write(other, n, 5)
    with HostCheckpointCache(cfg(tmp_path / "cache")) as cache:
        os.symlink(other, cache.entry_path(str(ck)))
        assert load(cache, hpool, ck, n) == data
        assert cache.stats()["hits"] == 0 and other.read_bytes() == other_bytes


def test_an_abort_whose_unlink_fails_still_lets_go_of_the_lock_and_entry(tmp_path, hpool, monkeypatch, caplog):
    """r4's second half: the fill's .fill could not be unlinked (EPERM), the OSError escaped ``_abort_fill`` before
    it closed the fill lock, and every other worker waited lock_timeout_s on a lock nobody would release."""
    import warmserve.memory.host_cache as hc

    ck, n = tmp_path / "model.safetensors", MiB
    write(ck, n, 6)
    root = tmp_path / "cache"
    with HostCheckpointCache(cfg(root)) as cache:
        slot = hpool.create_slot(n, "s")
        real_start = slot._start_load
        monkeypatch.setattr(slot, "_start_load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))

        def refuse(path):
            if str(path).endswith(".fill"):
                raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
            return real_unlink(path)

        real_unlink = hc.os.unlink
        monkeypatch.setattr(hc.os, "unlink", refuse)
        import warmserve.memory.cache_entry as ce
        monkeypatch.setattr(ce.os, "unlink", refuse)
        with caplog.at_level(logging.WARNING, logger="warmserve.memory"), pytest.raises(RuntimeError, match="boom"):
            cache.load(slot, [(str(ck), 0, 0, n)])
        monkeypatch.setattr(slot, "_start_load", real_start)
        slot.close()
        lock = cache.entry_path(str(ck))[: -len(".bin")] + ".lock"
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: the lock was never released
        finally:
            os.close(fd)
        assert cache._entries == {}
        assert any(".fill" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# ------------------------------------------------------------------ 3. a full tmpfs
def small_tmpfs(monkeypatch, root, limit: int) -> None:
    """Make ``root`` behave as a tmpfs of ``limit`` bytes: a fallocate past what the entries and fills there leave
    free raises ENOSPC (as a real one does; r3 ran on an 8 MiB mount), statvfs says so."""
    real_fallocate, real_statvfs = os.posix_fallocate, os.statvfs

    def used() -> int:
        total = 0
        for name in os.listdir(root):
            if name.endswith((".bin", ".fill")):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
        return total

    def fallocate(fd, off, size):
        if used() + size > limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fallocate(fd, off, size)

    def statvfs(path):
        r = real_statvfs(path)
        if os.path.realpath(path) != os.path.realpath(root):
            return r
        blocks, free = limit // r.f_frsize, max(0, limit - used()) // r.f_frsize
        return os.statvfs_result((r.f_bsize, r.f_frsize, blocks, free, free, r.f_files, r.f_ffree, r.f_favail,
                                  r.f_flag, r.f_namemax))

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    monkeypatch.setattr(os, "statvfs", statvfs)


def test_a_full_tmpfs_evicts_the_least_recently_used_to_fit_a_new_checkpoint(tmp_path, hpool, monkeypatch):
    """r3: an 8 MiB tmpfs and a budget of 1 GiB; model0 (5 MiB) cached, then only model1 (5 MiB) used: model1 was
    loaded straight from the file every time, and model0 kept the tmpfs."""
    root = tmp_path / "cache"
    root.mkdir()
    small_tmpfs(monkeypatch, str(root), 8 * MiB)
    n = 5 * MiB
    m0, m1 = tmp_path / "model0.bin", tmp_path / "model1.bin"
    write(m0, n, 7)
    d1 = write(m1, n, 8)
    with HostCheckpointCache(cfg(root)) as cache:
        load(cache, hpool, m0, n)
        for _ in range(3):
            assert load(cache, hpool, m1, n) == d1
        st = cache.stats()
        assert (st["fills"], st["hits"], st["bypassed"], st["evicted"]) == (2, 2, 0, 1), st
        assert cache.contains(str(m1)) and not cache.contains(str(m0))


def test_a_checkpoint_the_tmpfs_cannot_hold_is_read_from_the_file_with_one_warning(tmp_path, hpool, monkeypatch,
                                                                                    caplog):
    """Larger than the tmpfs, though within the budget: loaded straight from the file, with one WARNING naming the
    budget, the filesystem's size and free space, and the fix (before: nothing said, every time)."""
    root = tmp_path / "cache"
    root.mkdir()
    small_tmpfs(monkeypatch, str(root), 4 * MiB)
    n = 6 * MiB
    ck = tmp_path / "big.bin"
    data = write(ck, n, 9)
    with HostCheckpointCache(cfg(root)) as cache, caplog.at_level(logging.WARNING, logger="warmserve.memory"):
        for _ in range(2):
            assert load(cache, hpool, ck, n) == data
        assert cache.stats()["bypassed"] == 2
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1, said
    assert "--host-cache-gib" in said[0] and "1.0 GiB" in said[0] and "4.0 MiB" in said[0], said[0]
    assert "free" in said[0] and "Fix:" in said[0], said[0]


# ------------------------------------------------------------------ 4. a slow fill of another worker
def test_a_wait_past_lock_timeout_reads_the_file_instead_of_failing(tmp_path, hpool, caplog):
    """r5: another worker holds the entry's fill lock (a slow fill) past lock_timeout_s: the load failed with
    CacheBusyError (503) though the file was readable. Now it reads the file, with a WARNING."""
    ck, n = tmp_path / "model.safetensors", MiB
    data = write(ck, n, 10)
    with HostCheckpointCache(cfg(tmp_path / "cache", lock_timeout_s=0.3)) as cache:
        lock = cache.entry_path(str(ck))[: -len(".bin")] + ".lock"
        other = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)  # "another worker": its own open file description
        fcntl.flock(other, fcntl.LOCK_EX)
        try:
            with caplog.at_level(logging.WARNING, logger="warmserve.memory"):
                assert load(cache, hpool, ck, n) == data
        finally:
            os.close(other)
        st = cache.stats()
        assert (st["bypassed"], st["fills"]) == (1, 0)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("0.3 s" in m and cache.entry_path(str(ck)) in m for m in said), said


# ------------------------------------------------------------------ 5. another user's directory and entries
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")


@needs_root
def test_a_cache_directory_of_another_user_is_refused_though_this_one_can_write_it(tmp_path):
    """r2/r4: a world-writable root made first by another user (as /dev/shm/warmserve-ckpt can be) was accepted,
    and that user could plant entries and symlinks in it. Root can write it; it is refused all the same."""
    root = tmp_path / "cache"
    root.mkdir()
    os.chmod(root, 0o1777)
    os.chown(root, 65534, 65534)
    with pytest.raises(InvalidArgumentError) as e:
        HostCheckpointCache(cfg(root))
    said = str(e.value)
    assert str(root) in said and "uid 65534" in said and "1777" in said and "--host-cache-dir" in said, said


@needs_root
def test_an_entry_of_another_user_is_not_served_and_not_overwritten(tmp_path, hpool):
    """r2: another user wrote an entry under this checkpoint's key (the key comes from a stat() anyone may make);
    the load was a hit that served that user's bytes. Now it reads the file and leaves their entry alone."""
    ck, n = tmp_path / "model.safetensors", MiB
    data = write(ck, n, 11)
    with HostCheckpointCache(cfg(tmp_path / "cache")) as cache:
        entry = cache.entry_path(str(ck))
        with open(entry, "wb") as f:
            f.write(b"\x66" * n)
        os.chown(entry, 65534, 65534)
        assert load(cache, hpool, ck, n) == data
        st = cache.stats()
        assert (st["hits"], st["fills"], st["bypassed"]) == (0, 0, 1), st
        assert open(entry, "rb").read() == b"\x66" * n and os.stat(entry).st_uid == 65534
