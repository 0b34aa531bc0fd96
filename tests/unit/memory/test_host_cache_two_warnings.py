"""The host checkpoint cache's two "cannot hold" warnings (memory/host_cache.py): a filesystem with no room for an
entry, and host memory too short for an entry on a memory-backed filesystem. Each is said once per cache, and one
does not silence the other: before, they shared one flag, so a cache that first met a short memory never said that
its filesystem was full (left alone in review, 2026-12-06, taken the next session)."""

from __future__ import annotations

import errno
import logging
import os

import torch

from warmserve.memory import host_cache
from warmserve.memory.host_cache import HostCheckpointCache

from test_host_cache import write  # this folder's checkpoint writer
from test_host_cache_review_sharing import cfg  # this folder's cache config (hpool: conftest.py)

MiB = 1 << 20


def test_the_room_and_the_memory_warnings_are_each_said_once(tmp_path, hpool, monkeypatch, caplog):
    cks = [tmp_path / f"m{i}.safetensors" for i in range(4)]
    datas = [write(ck, MiB, i + 1) for i, ck in enumerate(cks)]
    real_fallocate = os.posix_fallocate

    def no_room(fd, off, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def load(cache, i):
        slot = hpool.create_slot(MiB, f"s{i}")
        try:
            cache.load(slot, [(str(cks[i]), 0, 0, MiB)]).wait()
            assert slot.tensor(0, (MiB,), torch.uint8).numpy().tobytes() == datas[i]  # read from the file
        finally:
            slot.close()

    caplog.set_level(logging.WARNING)
    with HostCheckpointCache(cfg(tmp_path / "cache")) as cache:
        # Host memory says 0.5 MiB is left for a 1 MiB entry (the cgroup case of test_host_cache_cgroup_limit.py).
        monkeypatch.setattr(host_cache, "fill_memory_room", lambda root: (MiB // 2, "MemAvailable"))
        load(cache, 0)
        load(cache, 1)
        # Then memory is plenty, but the filesystem is full.
        monkeypatch.setattr(host_cache, "fill_memory_room", lambda root: (None, ""))
        monkeypatch.setattr(os, "posix_fallocate", no_room)
        load(cache, 2)
        load(cache, 3)
        monkeypatch.setattr(os, "posix_fallocate", real_fallocate)
        assert cache.stats()["fills"] == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("host cache:")]
    assert sum("would pass the host memory left" in m for m in said) == 1, said
    assert sum("no room on the filesystem" in m for m in said) == 1, said


def test_a_file_larger_than_the_whole_budget_is_said_once(tmp_path, hpool, caplog):
    """Found in review: a cluster whose every checkpoint was larger than the budget cached nothing, and said nothing."""
    import dataclasses

    cks = [tmp_path / f"big{i}.safetensors" for i in range(2)]
    datas = [write(ck, MiB, i + 1) for i, ck in enumerate(cks)]
    caplog.set_level(logging.WARNING)
    with HostCheckpointCache(dataclasses.replace(cfg(tmp_path / "cache"), capacity_bytes=MiB // 2)) as cache:
        for i, ck in enumerate(cks):
            slot = hpool.create_slot(MiB, f"b{i}")
            try:
                cache.load(slot, [(str(ck), 0, 0, MiB)]).wait()
                assert slot.tensor(0, (MiB,), torch.uint8).numpy().tobytes() == datas[i]
            finally:
                slot.close()
        assert cache.stats()["bypassed"] == 2 and cache.stats()["fills"] == 0
    said = [r.getMessage() for r in caplog.records if "larger than the cache's whole budget" in r.getMessage()]
    assert len(said) == 1 and str(cks[0]) in said[0] and "512.0 KiB" in said[0] and "Fix:" in said[0], said
