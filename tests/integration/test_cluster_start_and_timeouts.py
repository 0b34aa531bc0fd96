"""`warmserve.Cluster`: a start that cannot serve every model, or whose workers do not come, fails with the error
that says why; and generate()'s timeout_s takes "no limit" (None, inf, huge values) and refuses what is no time."""

import math
import os
import time

import pytest

import warmserve
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.errors import InvalidArgumentError, TimeoutError_
from warmserve.policy.colocation import UnplacedModelError
from warmserve.policy.config import PolicyConfig

import serving

MODEL = "llama-20m"


def test_dedicated_with_more_models_than_workers_refuses_to_start():
    """Found in review: `dedicated` left the third model of three on two workers without an instance, silently;
    its requests waited until they timed out. Now the start fails as `shared`'s layout does, naming it."""
    models = ("llama-20m", "qwen2-30m", "llama-90m")
    paths = serving.demo_paths(models)
    cfg = ClusterConfig(models=tuple(ModelSpec(path=paths[m]) for m in models), cpu_workers=2,
                        cpu_worker_memory_bytes=512 << 20, cpu_worker_threads=1,
                        controller=ControllerConfig(policy="dedicated", policy_config=PolicyConfig(window_s=30),
                                                    tick_s=0.2, heartbeat_interval_s=0.2, worker_timeout_s=2.0))
    before = serving.worker_pids(os.getpid())
    with pytest.raises(UnplacedModelError, match=r"models \['qwen2-30m'\] get no instance.*the 2 GPUs") as e:
        warmserve.Cluster(None, config=cfg)
    assert e.value.models == ["qwen2-30m"] and e.value.gpus == 2 and "policy 'shared'" in str(e.value)
    assert serving.worker_pids(os.getpid()) == before  # its workers were stopped


def test_a_start_that_times_out_keeps_its_own_error():
    """Found in review: the controller's "1 of 2 workers registered within 3 s" came out as the caller's wait
    running out ("no result within 33 s"), which was not what happened."""
    path = serving.demo_paths((MODEL,))[MODEL]
    t0 = time.monotonic()
    # 0 or 1: the local worker's start (a process importing torch) can itself take over 3 s on a loaded machine
    with pytest.raises(TimeoutError_, match="[01] of 2 workers registered within 3 s") as e:
        warmserve.Cluster([path], cpu_workers=1, remote_workers=1, start_timeout_s=3,
                          cpu_worker_memory_bytes=256 << 20)
    assert e.value.expected == 2 and time.monotonic() - t0 < 30


cluster = serving.cluster_fixture(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20)


def test_timeout_s_of_no_limit_and_of_no_time(cluster):
    """Found in review: timeout_s=math.inf and 1e12 raised OverflowError (after the request had gone out: it was
    aborted), and nan timed out at once."""
    for no_limit in (math.inf, 1e12, 10 ** 400, None):
        assert cluster.generate(MODEL, "hello", max_tokens=3, temperature=0, timeout_s=no_limit).completion_tokens == 3
    assert cluster.generate(MODEL, "hello", max_tokens=3, temperature=0, timeout_s=60).completion_tokens == 3
    for bad in (math.nan, 0, -1.0, -math.inf, "5", True):
        with pytest.raises(InvalidArgumentError, match="timeout_s") as e:
            cluster.generate(MODEL, "hello", max_tokens=3, timeout_s=bad)
        assert e.value.param == "timeout_s"
    m = cluster.controller.metrics
    assert m.requests.get(model=MODEL, outcome="abort") == 0
    assert sum(m.requests.get(model=MODEL, outcome=o) for o in ("stop", "length")) == 5
