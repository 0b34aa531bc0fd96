"""The host checkpoint cache beside another user of the machine, found in review (two deployments on one machine):
the cache's directory was made 0755 and its entries 0644 in /dev/shm, every user's, so another user read through
the cache a checkpoint kept in a folder only its owner could read. Now the directory the cache makes is 0700, its
entries 0600, and this user's entries published readable by others earlier are made 0600 when a cache opens."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

from test_host_cache import write  # this folder's checkpoint writer

PAGE = 4096
MiB = 1 << 20
NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="reads as another user (setuid): needs root")

#: Reads a file as uid/gid 65534 (another user of the machine); prints "read" or the error's name.
READER = """
import os, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:
    open(sys.argv[1], "rb").read(16); print("read")
except OSError as e:
    print(type(e).__name__)
"""


@pytest.fixture
def shared_parent():
    """A folder every user may enter, as /dev/shm is (pytest's tmp_path is 0700, which would hide the entries)."""
    d = tempfile.mkdtemp(prefix="warmserve-review-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def private_checkpoint(tmp_path, n: int):
    """A checkpoint file readable by this user alone (0600 in a 0700 folder), its bytes."""
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    ck = folder / "model.safetensors"
    data = write(ck, n, 5)
    os.chmod(ck, 0o600)
    return ck, data


def as_other_user(path: str) -> str:
    return subprocess.run([sys.executable, "-c", READER, path], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def test_the_cache_makes_its_directory_and_entries_this_users_alone(tmp_path, shared_parent, hpool):
    ck, data = private_checkpoint(tmp_path, MiB)
    root = os.path.join(shared_parent, "warmserve-ckpt")
    with HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=1 << 30, chunk_bytes=PAGE)) as cache:
        slot = hpool.create_slot(MiB, "s")
        try:
            cache.load(slot, [(str(ck), 0, 0, MiB)]).wait()
        finally:
            slot.close()
        entry = cache.entry_path(str(ck))
        assert cache.stats()["fills"] == 1 and open(entry, "rb").read() == data
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, oct(os.stat(root).st_mode)
        assert stat.S_IMODE(os.stat(entry).st_mode) == 0o600, oct(os.stat(entry).st_mode)
        if os.geteuid() == 0:  # the real question: can another user read the weights? (before: "read")
            assert as_other_user(str(ck)) == "PermissionError"
            assert as_other_user(entry) == "PermissionError"


@needs_root
def test_an_entry_published_readable_by_others_is_made_private_when_a_cache_opens(tmp_path, shared_parent, hpool):
    """An entry an earlier version published 0644, in a 0755 folder of this user's (a folder the user chose is
    left as it is): the next cache on that folder makes it 0600, and another user can no longer read it."""
    ck, data = private_checkpoint(tmp_path, MiB)
    root = os.path.join(shared_parent, "cache")
    os.mkdir(root, 0o755)
    os.chmod(root, 0o755)
    cfg = HostCacheConfig(root=root, capacity_bytes=1 << 30, chunk_bytes=PAGE)
    with HostCheckpointCache(cfg) as cache:
        entry = cache.entry_path(str(ck))
    with open(entry, "wb") as f:
        f.write(data)
    os.chmod(entry, 0o644)
    assert as_other_user(entry) == "read"  # the leak this guards against, as an older version left it
    with HostCheckpointCache(cfg) as cache:
        assert stat.S_IMODE(os.stat(entry).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o755  # the user's folder, not the cache's to change
        assert as_other_user(entry) == "PermissionError"
        slot = hpool.create_slot(MiB, "s")
        try:
            cache.load(slot, [(str(ck), 0, 0, MiB)]).wait()
            assert cache.stats()["hits"] == 1
        finally:
            slot.close()
