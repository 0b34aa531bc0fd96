"""LoadJob.wait(timeout_s=NaN) is refused (found in review: NaN compared false with every deadline, so a wait on a
load still running never ended). Tried on a finished load, where the wait before the fix returned at once instead of
hanging the test."""

from __future__ import annotations

import pytest
import torch

from warmserve.errors import InvalidArgumentError
from warmserve.memory import PagePool

PAGE = 4096


def test_a_nan_timeout_is_refused(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc" * 1000)
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        s = pool.create_slot(8 * PAGE, "s")
        s.map(0, 2)
        job = s.load([(str(f), 0, 0, 3000)])
        assert job.wait(timeout_s=30.0) == 3000
        with pytest.raises(InvalidArgumentError, match="timeout_s is NaN"):
            job.wait(timeout_s=float("nan"))
        view = s.tensors({"x": (0, (3000,), torch.uint8)})["x"]
        assert bytes(view.numpy()) == b"abc" * 1000
        del view
        s.close(force=True)


def test_a_nan_timeout_leaves_a_host_cache_load_standing(tmp_path):
    """The cache's wait refuses it before its error handling, which would stop the load and settle it as failed."""
    from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

    f = tmp_path / "x"
    f.write_bytes(b"xyz" * 1000)
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool, \
            HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=1 << 20)) as cache:
        s = pool.create_slot(8 * PAGE, "s")
        job = cache.load(s, [(str(f), 0, 0, 3000)])
        with pytest.raises(InvalidArgumentError, match="timeout_s is NaN"):
            job.wait(timeout_s=float("nan"))
        assert job.wait(timeout_s=30.0) == 3000
        view = s.tensors({"x": (0, (3000,), torch.uint8)})["x"]
        assert bytes(view.numpy()) == b"xyz" * 1000
        del view
        assert cache.stats()["fills"] == 1 and cache.stats()["usage_bytes"] > 0, cache.stats()  # its fill kept
        s.close(force=True)
