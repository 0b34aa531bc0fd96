"""Found in review: the prewarm plan ignored ``max_instances_per_model``: under a cap of 1, a model whose forecast
asks for 4 instances got 4 replicas, 3 of which could never become instances, and took the room of the others'.
With the cap set, the plan prewarms at most cap - running replicas of a model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30
T0 = 86400 * 2


def _plan(cap: int, big_requests: int = 0):
    """One 8-GPU server of 40 GiB GPUs (12 tp-2 replica slots of 13B); `big`'s forecast peak is 1000 in flight
    (B = 32), the three others' 300. Returns (prewarmed replicas per model, instances of `big`) after the tick at
    two days of history, with ``big_requests`` of `big` in flight from just before it."""
    ms = [ModelInfo(n, 26 * 10**9, 2, 819_200, 0.070, 0.020) for n in ("big", "o0", "o1", "o2")]
    st = ClusterState.uniform(1, ms, gpus_per_server=8, gpu_bytes=40 * GiB)
    ws = np.arange(0, T0, 300.0)
    hist = {m.name: (ws, np.full(len(ws), 700.0 if m.name == "big" else 200.0),
                     np.full(len(ws), 1000.0 if m.name == "big" else 300.0)) for m in ms}
    pol = make_policy("warmserve", models=ms, config=PolicyConfig(max_instances_per_model=cap), history=hist)
    d = instant_driver(pol, st)
    for k in range(big_requests):
        d.submit("big", f"r{k}", T0 - 0.5)
    d.tick(T0)
    return (dict(Counter(p.model for p in st.prewarms.values())),
            sum(1 for i in st.instances.values() if i.model == "big"))


@pytest.mark.parametrize("cap", [1, 3])
def test_the_plan_prewarms_no_more_replicas_than_the_cap_lets_start(cap):
    got, _ = _plan(cap)
    assert got == {"big": cap, "o0": cap, "o1": cap, "o2": cap}, got  # before: big 4, o0 3, o1 3, o2 2


def test_running_instances_count_against_the_cap():
    got, running = _plan(3, big_requests=20)
    assert running >= 1
    assert got.get("big", 0) == 3 - running, (got, running)


def test_no_cap_plans_as_before():
    assert _plan(0)[0] == {"big": 4, "o0": 3, "o1": 3, "o2": 2}
