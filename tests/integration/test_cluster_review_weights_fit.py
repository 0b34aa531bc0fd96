"""A model whose weights (one rank's share under tp) cannot fit a CPU worker's pool is refused at start, before any
worker is spawned. Found in review: it was accepted, no instance could ever start, and each request waited out
request_timeout_s (120 s) for a TimeoutError_ that said "retry later or add workers"."""

import time

import pytest
import serving

import warmserve
from warmserve.config import ClusterConfig
from warmserve.errors import InvalidArgumentError

BIG = "llama-90m"  # 337 MiB of fp32 weights


@pytest.mark.parametrize("tp, workers", [(1, 1), (2, 2)])
def test_weights_that_no_worker_pool_holds_are_refused_at_start(tp, workers, monkeypatch):
    import warmserve.controller.launch as launch

    def never(*a, **k):
        raise AssertionError("a worker was spawned: the check came too late")

    monkeypatch.setattr(launch, "spawn_worker", never)
    path = serving.demo_paths((BIG,))[BIG]
    pool = (320 << 20) // tp if tp > 1 else 256 << 20  # below the weights (their share) + a page, either way
    t0 = time.monotonic()
    with pytest.raises(InvalidArgumentError, match="KV page need .* of a CPU worker's pool, which holds") as e:
        warmserve.Cluster([warmserve.ModelSpec(path=path, tp=tp)], cpu_workers=workers, cpu_worker_memory_bytes=pool)
    assert e.value.fields["pool_bytes"] == pool and e.value.fields["need_bytes"] > pool, e.value.fields
    assert time.monotonic() - t0 < 30


def test_weights_that_fit_with_room_for_kv_start():
    path = serving.demo_paths((BIG,))[BIG]
    # One torch thread, as the suite's other clusters: the default two wait on each other on a busy 2-core machine
    cfg = ClusterConfig(models=(warmserve.ModelSpec(path=path),), cpu_workers=1, cpu_worker_memory_bytes=512 << 20,
                        cpu_worker_threads=1)
    with warmserve.Cluster(config=cfg) as c:
        out = c.generate(BIG, [1, 2, 3], params=warmserve.SamplingParams(max_tokens=2, temperature=0))
        assert out.completion_tokens == 2
