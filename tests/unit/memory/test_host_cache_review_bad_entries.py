"""The host checkpoint cache, found in review: an entry cut short was served at its own size (every later load of
the checkpoint failed, and it was never filled again); a directory or entry of another user failed every load
with an untyped PermissionError (and passed start-up); and a fill whose fallocate failed with anything but
ENOSPC or ENOMEM (EFBIG, EDQUOT, EROFS) failed the load instead of loading straight from the file."""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from warmserve.errors import InvalidArgumentError
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

from test_host_cache import write  # this folder's checkpoint writer

PAGE = 4096
N = 64 * PAGE


@pytest.fixture
def hpool():
    with PagePool(4 * N, page_bytes=PAGE, prefault=False) as p:
        yield p


def cfg(root) -> HostCacheConfig:
    return HostCacheConfig(root=str(root), capacity_bytes=1 << 30, chunk_bytes=PAGE)


def load(cache, pool, path, data: bytes) -> None:
    """One load of all of ``path`` through ``cache``; its bytes must be the file's."""
    slot = pool.create_slot(len(data), "s")
    try:
        cache.load(slot, [(str(path), 0, 0, len(data))]).wait()
        assert slot.tensor(0, (len(data),), torch.uint8).numpy().tobytes() == data
    finally:
        slot.close()


def lock_is_free(root) -> bool:
    for lock in glob.glob(os.path.join(str(root), "*-*.lock")):
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
    return True


# ------------------------------------------------------------------ an entry of the wrong size
@pytest.mark.parametrize("nbytes", [N // 2, N + PAGE, 0])
def test_an_entry_of_the_wrong_size_is_filled_again(tmp_path, hpool, nbytes):
    ck = tmp_path / "ckpt.bin"
    data = write(ck, N, 1)
    root = tmp_path / "cache"
    with HostCheckpointCache(cfg(root)) as c:
        load(c, hpool, ck, data)
        entry = c.entry_path(str(ck))
    os.truncate(entry, nbytes)  # a copy cut short, or grown
    for _ in range(2):  # the first load fills it again, the second hits it
        with HostCheckpointCache(cfg(root)) as c:
            load(c, hpool, ck, data)
            st = c.stats()
        assert os.path.getsize(entry) == N and lock_is_free(root)
    assert (st["hits"], st["fills"]) == (1, 0), st
    assert not glob.glob(str(root / "*.fill"))


#: A cache that maps ROOT's entry of CKPT, then loads it again after the entry was cut short: prints its stats.
CUT_WHILE_MAPPED = r"""
import json, os, sys, torch
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache
root, ck = sys.argv[1], sys.argv[2]
data = open(ck, "rb").read()
n = len(data)
with PagePool(n, page_bytes=4096, prefault=False) as pool, \
        HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=1 << 30, chunk_bytes=4096)) as c:
    ok = []
    for cut in (False, True):
        if cut:
            os.truncate(c.entry_path(ck), n // 2)
        slot = pool.create_slot(n, "s")
        c.load(slot, [(ck, 0, 0, n)]).wait()
        ok.append(slot.tensor(0, (n,), torch.uint8).numpy().tobytes() == data)
        slot.close()
    print(json.dumps(dict(c.stats(), correct=ok, size=os.path.getsize(c.entry_path(ck)))))
"""


def test_an_entry_cut_short_while_this_process_maps_it_is_filled_again(tmp_path):
    """In a child: its mapping read past the entry's new end is a SIGBUS."""
    ck = tmp_path / "ckpt.bin"
    write(ck, N, 2)
    r = subprocess.run([sys.executable, "-c", CUT_WHILE_MAPPED, str(tmp_path / "cache"), str(ck)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (out["fills"], out["invalidated"], out["correct"], out["size"]) == (2, 1, [True, True], N), out


# ------------------------------------------------------------------ a fill the filesystem refuses
@pytest.mark.parametrize("err", [errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO])
def test_a_fill_the_filesystem_refuses_is_loaded_straight_from_the_file(tmp_path, hpool, monkeypatch, caplog, err):
    ck = tmp_path / "ckpt.bin"
    data = write(ck, N, 3)
    root = tmp_path / "cache"

    def refuse(fd, offset, length):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "posix_fallocate", refuse)
    with HostCheckpointCache(cfg(root)) as c:
        load(c, hpool, ck, data)
        assert c.stats()["bypassed"] == 1 and not c.contains(str(ck))
    assert not glob.glob(str(root / "*.fill")) and lock_is_free(root)
    assert "loaded straight from the file" in caplog.text and ".bin" in caplog.text


#: A load under RLIMIT_FSIZE below the checkpoint's size: prints the cache's stats, or the error's type.
FSIZE = r"""
import json, os, resource, signal, sys, torch
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
root, ck = sys.argv[1], sys.argv[2]
size = os.path.getsize(ck)
resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))
n = size // 4  # the pool's memory file too is under the limit: a quarter of the checkpoint is loaded
with PagePool(n, page_bytes=4096, prefault=False) as pool, \
        HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=1 << 30)) as cache:
    slot = pool.create_slot(n, "s")
    try:
        cache.load(slot, [(ck, 0, 0, n)]).wait()
    except Exception as e:
        print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
        sys.exit(0)
    ok = slot.tensor(0, (n,), torch.uint8).numpy().tobytes() == open(ck, "rb").read(n)
    print(json.dumps(dict(cache.stats(), correct=ok)))
"""


def test_a_fill_past_the_file_size_limit_is_loaded_straight_from_the_file(tmp_path):
    ck = tmp_path / "ckpt.bin"
    write(ck, N, 4)
    r = subprocess.run([sys.executable, "-c", FSIZE, str(tmp_path / "cache"), str(ck)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "error" not in out, out
    assert out["bypassed"] == 1 and out["correct"] and out["fills"] == 0, out


def test_a_root_that_is_no_directory_is_refused_typed(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InvalidArgumentError, match="cannot make files in it"):
        HostCheckpointCache(cfg(tmp_path / "file" / "cache"))


# ------------------------------------------------------------------ another user's directory and entries
#: root without the capabilities that let it pass file permissions: a second user, owner of the files root owns
NODAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner",
         "--inh-caps=-dac_override,-dac_read_search,-fowner"]

#: As that user: a cache at ROOT (or the worker's start-up check, with "worker"), then a load of CKPT; prints
#: what happened as JSON.
OTHER = r"""
import json, os, sys
from warmserve.errors import WarmServeError
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache
root, ck, mode = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(ck, "rb").read()
try:
    if mode == "worker":
        from warmserve.worker.main import build_host_cache
        cache = build_host_cache(1.0, root)
    else:
        cache = HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=1 << 30))
except WarmServeError as e:
    print(json.dumps({"start": type(e).__name__ + ": " + str(e)}))
    sys.exit(0)
import torch  # only past start-up: a refused start needs none of its 3-4 s import
if mode == "readonly":
    os.chmod(root, 0o555)  # the directory turns unwritable after start-up
with PagePool(len(data), page_bytes=4096, prefault=False) as pool:
    slot = pool.create_slot(len(data), "s")
    try:
        cache.load(slot, [(ck, 0, 0, len(data))]).wait()
    except Exception as e:
        print(json.dumps({"load": type(e).__name__ + ": " + str(e)}))
        sys.exit(0)
    ok = slot.tensor(0, (len(data),), torch.uint8).numpy().tobytes() == data
    writable = [e.writable for e in cache._entries.values()]
    print(json.dumps(dict(cache.stats(), correct=ok, writable=writable)))
"""


@pytest.fixture
def as_other_user():
    """Runs OTHER as a second user: root without CAP_DAC_OVERRIDE (files of uid 65534 are another user's)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as a second user")
    if subprocess.run(NODAC + ["true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")

    def run(root, ck, mode: str = "load") -> dict:
        r = subprocess.run(NODAC + [sys.executable, "-c", OTHER, str(root), str(ck), mode], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    return run


def give_away(path) -> None:
    os.chown(path, 65534, 65534)


@pytest.fixture
def shared(tmp_path, hpool):
    """(sticky 1777 cache directory, checkpoint, its bytes): the checkpoint's entry published by 'another user'."""
    os.chmod(tmp_path, 0o755)
    ck = tmp_path / "ckpt.bin"
    data = write(ck, N, 5)
    os.chmod(ck, 0o644)
    root = tmp_path / "cache"
    root.mkdir()
    os.chmod(root, 0o1777)
    with HostCheckpointCache(cfg(root)) as c:
        load(c, hpool, ck, data)
    for f in os.listdir(root):
        give_away(root / f)
    return root, ck, data


@pytest.mark.parametrize("mode", ["load", "worker"])
def test_a_directory_of_another_user_is_refused_at_start_up(tmp_path, as_other_user, mode):
    os.chmod(tmp_path, 0o755)
    ck = tmp_path / "ckpt.bin"
    write(ck, N, 6)
    os.chmod(ck, 0o644)
    root = tmp_path / "cache"
    root.mkdir(mode=0o755)
    give_away(root)
    out = as_other_user(root, ck, mode)
    assert out.get("start", "").startswith("InvalidArgumentError"), out
    assert str(root) in out["start"] and "uid 65534" in out["start"], out
    if mode == "worker":
        assert "--host-cache-dir" in out["start"], out


def test_an_entry_of_another_user_is_not_served_the_file_is_read(shared, as_other_user):
    """Found in a later review: another user's entry was a hit, so a user who could write the shared folder could
    plant the weights another user's workers served (``test_host_cache_review_sharing``)."""
    root, ck, _ = shared
    out = as_other_user(root, ck)
    assert "load" not in out and "start" not in out, out
    assert (out["hits"], out["bypassed"], out["correct"]) == (0, 1, True), out


def test_a_miss_whose_lock_is_another_users_is_loaded_straight_from_the_file(shared, as_other_user):
    root, ck, _ = shared
    for f in glob.glob(str(root / "*.bin")):
        os.unlink(f)  # a miss now; its fill lock (0600) is the other user's
    out = as_other_user(root, ck)
    assert "load" not in out and "start" not in out, out
    assert (out["bypassed"], out["fills"], out["correct"]) == (1, 0, True), out


def test_a_directory_unwritable_after_start_up_is_loaded_straight_from_the_file(tmp_path, as_other_user):
    os.chmod(tmp_path, 0o755)
    ck = tmp_path / "ckpt.bin"
    write(ck, N, 7)
    os.chmod(ck, 0o644)
    out = as_other_user(tmp_path / "cache", ck, "readonly")
    assert "load" not in out and "start" not in out, out
    assert (out["bypassed"], out["correct"]) == (1, True), out
