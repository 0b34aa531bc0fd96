"""Two deployments of one machine sharing the host checkpoint cache's directory (the default /dev/shm/warmserve-ckpt),
found in review: a second server with a smaller budget evicted every entry of the first one's when its workers
opened the cache (and again at each of its loads), unsaid; seen live, a 100 MiB cache opened beside a serve's 1 GiB
one evicted its 3 entries (545 MB). It is now said once per cache, with the fix. Sharing itself stays safe: the
first one's loads of evicted entries fill them again and give the file's bytes."""

from __future__ import annotations

import logging

import pytest

from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

from test_host_cache import write  # this folder's checkpoint writer
from test_host_cache_review_sharing import load  # a load's bytes

PAGE = 4096
MiB = 1 << 20


@pytest.fixture
def files(tmp_path):
    out = []
    for i in range(3):
        p = tmp_path / f"m{i}.safetensors"
        out.append((p, write(p, MiB, i)))
    return out


def test_a_smaller_budget_beside_a_larger_one_says_it_evicts_the_others_entries(tmp_path, files, hpool, caplog):
    root = str(tmp_path / "shared")
    big = HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=8 * MiB, chunk_bytes=PAGE))
    with caplog.at_level(logging.WARNING, logger="warmserve.memory"):
        for p, data in files:  # the first deployment fills its three entries
            assert load(big, hpool, p, MiB) == data
        assert "evicted to bring it within" not in caplog.text  # its own fills, within its budget: nothing said
        small = HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=MiB + MiB // 2, chunk_bytes=PAGE))
        said = [r.getMessage() for r in caplog.records if "evicted to bring it within" in r.getMessage()]
        assert len(said) == 1, caplog.text  # before: nothing, the entries gone all the same
        assert root in said[0] and "1.5 MiB" in said[0] and "another deployment" in said[0], said[0]
        assert "--host-cache-dir" in said[0] and "Fix:" in said[0], said[0]
        assert small.stats()["evicted"] == 2 and small.usage_bytes() <= MiB + MiB // 2
        # the first deployment's loads are still right: what was evicted is filled again from the file
        fills = big.stats()["fills"]
        for p, data in files:
            assert load(big, hpool, p, MiB) == data
        assert big.stats()["fills"] > fills
        assert load(small, hpool, files[0][0], MiB) == files[0][1]  # evicts again at its load: said once only
        assert small.stats()["evicted"] > 2  # the first one's refills, evicted again
        assert len([r for r in caplog.records if "evicted to bring it within" in r.getMessage()]) == 1
    big.close()
    small.close()


def test_one_budget_whose_fills_evict_says_nothing(tmp_path, files, hpool, caplog):
    """The warning is for a directory over this cache's budget, not for the evictions a full cache's fills make."""
    cfg = HostCacheConfig(root=str(tmp_path / "c"), capacity_bytes=2 * MiB, chunk_bytes=PAGE)
    with caplog.at_level(logging.WARNING, logger="warmserve.memory"), HostCheckpointCache(cfg) as cache:
        for p, data in files + files:
            assert load(cache, hpool, p, MiB) == data
        assert cache.stats()["evicted"] >= 1
    with caplog.at_level(logging.WARNING, logger="warmserve.memory"), HostCheckpointCache(cfg):
        pass  # a restart with the same budget
    assert "evicted to bring it within" not in caplog.text, caplog.text
