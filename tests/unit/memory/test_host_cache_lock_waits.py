"""The host checkpoint cache's waits for other workers' locks (memory/host_cache.py), held here by another process.
Found in review: a wait for another worker's fill lock past lock_timeout_s read the file (a WARNING), while a wait
for the cache's index lock past it failed the load (CacheBusyError, a 503) and ignored the load's stop event; and
each wait had a lock_timeout_s of its own, so a load of n files waited up to 2n times it. Now one lock_timeout_s
covers all of a load's waits, either lock past it reads the file with the same WARNING, and stop ends either wait.
Also: an interrupt during a fill's fallocate leaked the fill's descriptor and left its .fill file."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from warmserve.errors import CancelledError
from warmserve.memory.host_cache import HostCheckpointCache

from test_host_cache import write  # this folder's checkpoint writer
from test_host_cache_review_sharing import cfg  # this folder's cache config (hpool: conftest.py)

MiB = 1 << 20

#: Another worker: holds the flocks of the files named in argv until its stdin closes.
HOLDER = r"""
import fcntl, os, sys
fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o600) for p in sys.argv[1:]]
for fd in fds:
    fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


class Holder:
    """A process that holds the flocks of ``paths`` while the ``with`` block runs."""

    def __init__(self, paths: list[str]):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, *paths], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def __enter__(self):
        assert self.proc.stdout.readline().strip() == "held"
        return self

    def __exit__(self, *exc):
        self.proc.stdin.close()
        self.proc.wait(30)


def fill_lock(cache, path) -> str:
    return cache.entry_path(str(path))[: -len(".bin")] + ".lock"


def index_lock(cache) -> str:
    return os.path.join(cache.config.root, ".lock")


def assert_nothing_left(cache, paths) -> None:
    """No .fill file under the cache, and every file's fill lock free (this process took none for good)."""
    assert not [n for n in os.listdir(cache.config.root) if n.endswith(".fill")]
    for p in paths:
        fd = os.open(fill_lock(cache, p), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_a_wait_for_the_index_lock_past_lock_timeout_reads_the_file_as_a_fill_lock_wait_does(tmp_path, hpool,
                                                                                              caplog):
    """Before: CacheBusyError after lock_timeout_s (the load failed, though its file was readable)."""
    ck, n = tmp_path / "model.safetensors", MiB
    data = write(ck, n, 1)
    with HostCheckpointCache(cfg(tmp_path / "cache", lock_timeout_s=0.5)) as cache, Holder([index_lock(cache)]):
        slot = hpool.create_slot(n, "s")
        try:
            with caplog.at_level(logging.WARNING, logger="warmserve.memory"):
                t0 = time.monotonic()
                job = cache.load(slot, [(str(ck), 0, 0, n)])
                took = time.monotonic() - t0
                job.wait()
            assert slot.tensor(0, (n,), torch.uint8).numpy().tobytes() == data
        finally:
            slot.close()
        assert 0.4 < took < 2.5, took
        st = cache.stats()
        assert (st["bypassed"], st["fills"]) == (1, 0), st
        assert_nothing_left(cache, [ck])
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("index lock" in m and "0.5 s" in m and "lock_timeout_s" in m for m in said), said


def test_one_lock_timeout_covers_all_the_waits_of_a_load(tmp_path, hpool):
    """Four files whose fills another worker holds, and the index lock: before, each file waited lock_timeout_s
    (4 x 0.8 s), and a fifth, uncached file then waited as long again for the index lock and failed."""
    files = []
    for i in range(5):
        files.append(tmp_path / f"model-{i}.safetensors")
        write(files[-1], 64 * 1024, i)
    srcs = [(str(p), 0, i * 64 * 1024, 64 * 1024) for i, p in enumerate(files)]
    with HostCheckpointCache(cfg(tmp_path / "cache", lock_timeout_s=0.8)) as cache, \
            Holder([fill_lock(cache, p) for p in files[:4]] + [index_lock(cache)]):
        slot = hpool.create_slot(5 * 64 * 1024, "s")
        try:
            t0 = time.monotonic()
            job = cache.load(slot, srcs)
            took = time.monotonic() - t0
            job.wait()
            got = slot.tensor(0, (5 * 64 * 1024,), torch.uint8).numpy().tobytes()
        finally:
            slot.close()
        assert got == b"".join(p.read_bytes() for p in files)
        assert 0.7 < took < 2.2, took  # one lock_timeout_s, plus slack for a busy machine
        assert cache.stats()["bypassed"] == 5
    with HostCheckpointCache(cfg(tmp_path / "cache")) as cache:
        assert_nothing_left(cache, files)


def test_stop_ends_a_wait_for_the_index_lock(tmp_path, hpool):
    """Before: the stop event was not passed to that wait, which ran its lock_timeout_s and raised CacheBusyError."""
    ck, n = tmp_path / "model.safetensors", MiB
    write(ck, n, 2)
    stop = threading.Event()
    with HostCheckpointCache(cfg(tmp_path / "cache", lock_timeout_s=6.0)) as cache, Holder([index_lock(cache)]):
        slot = hpool.create_slot(n, "s")
        timer = threading.Timer(0.3, stop.set)
        timer.start()
        try:
            t0 = time.monotonic()
            with pytest.raises(CancelledError, match="index lock"):
                cache.load(slot, [(str(ck), 0, 0, n)], stop=stop)
            assert time.monotonic() - t0 < 3.0
        finally:
            timer.cancel()
            slot.close()
        assert_nothing_left(cache, [ck])


def test_an_interrupt_in_a_fills_fallocate_leaks_no_descriptor_nor_fill_file(tmp_path, hpool, monkeypatch):
    """A KeyboardInterrupt delivered during the fallocate of a large entry (a signal can only be put there by
    replacing the call): before, only an OSError closed the fill's descriptor and deleted its file."""
    ck, n = tmp_path / "model.safetensors", MiB
    data = write(ck, n, 3)
    with HostCheckpointCache(cfg(tmp_path / "cache")) as cache:
        real = os.posix_fallocate

        def interrupted(fd, off, size):
            raise KeyboardInterrupt

        before = set(os.listdir("/proc/self/fd"))
        slot = hpool.create_slot(n, "s")
        try:
            monkeypatch.setattr(os, "posix_fallocate", interrupted)
            with pytest.raises(KeyboardInterrupt):
                cache.load(slot, [(str(ck), 0, 0, n)])
            monkeypatch.setattr(os, "posix_fallocate", real)
            assert set(os.listdir("/proc/self/fd")) == before
            assert_nothing_left(cache, [ck])
            cache.load(slot, [(str(ck), 0, 0, n)]).wait()  # the next load fills it
            assert slot.tensor(0, (n,), torch.uint8).numpy().tobytes() == data
        finally:
            slot.close()
        assert cache.stats()["fills"] == 1
