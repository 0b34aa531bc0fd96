"""With ``route_cap_per_instance`` below B (instance_capacity), the policy sizes instance counts from the capacity
route() gives an instance, min(B, cap): scale-in, scale-out and the prewarm plan. Found in review: the scale-in
count was load / 0.5 / B, so a steady 16 in flight on one 7B model with a cap of 8 (two instances full) had the
tick stop one instance a second and route() revive it (115 StopInstance and 115 ReviveInstance in 120 s)."""

from collections import deque

import numpy as np
import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState


def _steady(llama, cfg: PolicyConfig, in_flight: int = 16, seconds: int = 60) -> tuple[dict, ClusterState]:
    """One 7B model on one 8-GPU server, kept at ``in_flight`` requests (in flight or queued): one request each
    0.1 s while below it, each running 1.5 s; a tick every second. Returns the count of each scaling action."""
    m = llama("a")
    st = ClusterState.uniform(1, [m], gpus_per_server=8, gpu_bytes=72 << 30)
    drv = instant_driver(make_policy("warmserve", models=[m], config=cfg), st)
    counts = {A.StartInstance: 0, A.StopInstance: 0, A.ReviveInstance: 0}
    apply = drv._apply

    def counting(act, now):
        if type(act) in counts:
            counts[type(act)] += 1
        apply(act, now)

    drv._apply = counting
    running: deque = deque()  # (when it ends, request id)
    for k in range(seconds * 10):
        now = k / 10
        while running and running[0][0] <= now:
            _, r = running.popleft()
            iid = next(i for i, reqs in drv.executor.running.items() if r in reqs)
            drv.executor.running[iid].remove(r)
            drv.request_finished("a", iid, now, request=r)
        if sum(i.in_flight for i in st.instances.values()) + st.queued("a") < in_flight:
            drv.submit("a", f"r{k}", now)
            running.append((now + 1.5, f"r{k}"))
        if k % 10 == 0:
            drv.tick(now)
    return {t.__name__: n for t, n in counts.items()}, st


def test_a_cap_below_b_does_not_stop_and_revive_under_a_steady_load(llama):
    """Cap 8: 16 in flight need two instances; scale-in keeps ceil(16 / 0.5 / 8) = 4, so nothing stops (before:
    it kept ceil(16 / 0.5 / 32) = 1, and each tick stopped one that route() revived)."""
    counts, st = _steady(llama, PolicyConfig(route_cap_per_instance=8))
    assert counts["StopInstance"] == 0 and counts["ReviveInstance"] == 0, counts
    serving = [i for i in st.instances.values() if not i.draining]
    assert len(serving) >= 2 and all(i.in_flight <= 8 for i in serving)


@pytest.mark.parametrize("cap", [0, 32])
def test_no_cap_or_a_cap_of_b_starts_one_instance_and_nothing_else(llama, cap):
    counts, _ = _steady(llama, PolicyConfig(route_cap_per_instance=cap))
    assert counts == {"StartInstance": 1, "StopInstance": 0, "ReviveInstance": 0}


@pytest.mark.parametrize("cap, per", [(0, 32), (32, 32), (64, 32), (8, 8)])
def test_scale_out_and_scale_in_counts_divide_by_the_routed_capacity(llama, cap, per):
    pol = make_policy("warmserve", models=[llama("a")], config=PolicyConfig(route_cap_per_instance=cap))
    out, keep = pol._wanted("a", 16.0, 0.0, 0)
    assert out == pytest.approx(16 / 0.8 / per) and keep == pytest.approx(16 / 0.5 / per)
    assert pol.routed_capacity() == per


def test_the_prewarm_plan_counts_replicas_at_the_routed_capacity(llama):
    """A forecast peak of 40 in flight and one instance running: at B = 32 the plan wants one replica for the
    peak; at a cap of 8, ceil(40 / 8) - 1 = 4."""
    plans = {}
    for cap in (0, 8):
        pol = make_policy("warmserve", models=[llama("a")], config=PolicyConfig(route_cap_per_instance=cap))
        st = ClusterState.uniform(1, [llama("a")], gpus_per_server=8, gpu_bytes=72 << 30)
        drv = instant_driver(pol, st)
        drv.apply(A.StartInstance("i1", "a", (0,)), 0.0)
        pol.forecast_all = lambda window, models=None: (np.array([10.0]), np.array([40.0]))
        plans[cap] = sum(type(a) is A.Prewarm for a in pol.tick(st, 1.0))
    assert plans == {0: 1, 8: 4}
