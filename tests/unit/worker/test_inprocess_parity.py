"""The in-process twin behaves as a socket worker where the review found it did not: after Shutdown it serves
nothing (a socket worker's loop has ended; the twin went on loading into its pool), and it takes the engine limits
and the host checkpoint cache a worker's flags give."""

from __future__ import annotations

import pytest

from warmserve import protocol as P
from warmserve.errors import ClosedError
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache
from warmserve.worker import InProcessWorker


def test_after_shutdown_the_twin_refuses_requests(tiny_models):
    with InProcessWorker("cpu", memory_gib=0.25, prefault=False) as w:
        w.shutdown()
        with pytest.raises(ClosedError, match="shut down"):
            w.prewarm(tiny_models["tiny-llama"])
        assert w.pool.stats()["free_pages"] == w.pool.stats()["total_pages"]


def test_the_twin_takes_engine_limits_and_a_host_cache(tiny_models, tmp_path):
    cache = HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=256 << 20))
    with InProcessWorker("cpu", memory_gib=0.25, prefault=False, engine=P.EngineConfig(max_kv_blocks=3),
                         host_cache=cache) as w:
        w.prewarm(tiny_models["tiny-llama"])
        assert w.activate("tiny-llama").kv_blocks == 3  # the worker's limit, as --max-kv-blocks gives it
        assert w.stats().host_cache["fills"] >= 1
    cache.close()
