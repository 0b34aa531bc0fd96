"""Co-serving's merges (``policy.coserve``; found in review, each test failed before its fix): the dedicated
instance a merge retires is not revived (route() or the tick's revive would take back the GPU the merge freed), a
model that bursts while its merge is under way keeps an instance (retire stopped both), and a consolidating merge
opens no host on GPUs reserved for another model. All through the real driver (instant executor)."""

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _7b(name):
    return ModelInfo(name, 13_500_000_000, 1, 524_288, 0.035, 0.015)


def _live(st, m):
    return [i for i in st.instances.values() if i.model == m and not i.draining]


def _merging(start_ready=True):
    """Three servers of 4 GPUs: `big` (tp 4, 120 requests) on server 0, quiet `a` alone on GPU 4, `b` co-served on
    GPU 8. The tick at 10 s moves `a` beside `b` (a merge) so that `big` can start on GPUs 4-7."""
    models = [_7b("a"), _7b("b"), ModelInfo("big", 138_000_000_000, 4, 327_680, 0.1, 0.03)]
    st = ClusterState.uniform(3, models, gpus_per_server=4, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(
        replan_s=1e9, window_s=1e6, coserve_always=True, migrate_max_in_flight=0))
    d = instant_driver(pol, st, start_ready=start_ready)
    for iid, m, g, kv in (("big0", "big", (0, 1, 2, 3), 1.0), ("a0", "a", (4,), 1.0), ("b0", "b", (8,), 0.3)):
        d.apply(A.StartInstance(iid, m, g, kv_fraction=kv), 0.0)
        d.instance_ready(iid, 0.0)
    pol._co.ids.add("b0")
    d.submit("a", "a-r", 10.0)
    d.submit("b", "b-r", 10.0)
    for k in range(120):
        d.submit("big", f"big{k}", 10.0)
    d.tick(10.0)
    assert pol._co.merging["a"][0] == "a0"
    return d, st, pol


@pytest.mark.parametrize("via", ["route", "tick"])
def test_the_instance_a_merge_retired_is_not_revived(via):
    d, st, pol = _merging()
    d.tick(11.0)  # the co-served instance is ready: a0 stops (it drains its request)
    assert st.instances["a0"].draining
    if via == "route":  # 33 more: the co-served instance is at B, route() looks for a draining one
        for k in range(33):
            d.submit("a", f"x{k}", 11.5)
        assert st.instances["a0"].draining  # was revived at once
    else:  # 32 more (no overflow in route()): the 5 s load passes 0.8 x B and the tick wants a second instance
        for k in range(32):
            d.submit("a", f"x{k}", 11.5)
        for t in range(12, 20):
            d.tick(float(t))
            assert st.instances["a0"].draining, t  # was revived at 16 s, on the GPU freed for `big`


def _once(tick, seen):
    def wrapped(state, now_s):
        acts = tick(state, now_s)
        seen.append(acts)
        return acts
    wrapped.seen = seen
    return wrapped


def test_a_model_that_bursts_while_it_merges_keeps_an_instance():
    d, st, pol = _merging(start_ready=False)
    (new,) = [i.instance_id for i in _live(st, "a") if i.instance_id != "a0"]
    for k in range(40):  # 41 in flight on a0: no longer light while its co-served replacement starts
        d.submit("a", f"x{k}", 10.5)
    for t in range(11, 16):
        d.tick(float(t))
    assert not pol._co.light("a")
    pol.tick = _once(pol.tick, [])  # look at the one tick that finds the replacement ready
    d.instance_ready(new, 16.0)
    (acts,) = pol.tick.seen
    stopped = {a.instance_id for a in acts if type(a) is A.StopInstance}
    assert not {"a0", new} <= stopped  # both were stopped in that tick: `a` had no instance left
    assert any(i.ready for i in _live(st, "a"))


def test_a_consolidating_merge_opens_no_host_on_gpus_reserved_for_another_model():
    """`m` (too large to co-serve) had GPU 2 time-shared for it; its victim has drained, `m` still waits. Its
    start this tick is refused by the driver (its last start failed moments ago: backoff). The consolidating merge
    of the quiet pair `a`, `b` must not open its host on GPU 2."""
    models = [_7b("a"), _7b("b"), ModelInfo("m", 60 * GiB, 1, 524_288, 0.035, 0.015)]
    st = ClusterState.uniform(1, models, gpus_per_server=8, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6, consolidate=True))
    d = instant_driver(pol, st)
    d.apply(A.StartInstance("a0", "a", (0,)), 0.0)
    d.apply(A.StartInstance("b0", "b", (1,)), 0.0)
    d.apply(A.Prewarm("pm", "m", (3,), 1.0), 0.0)
    pol._plan_window = 0
    d.submit("a", "a-r", 10.0)
    d.submit("b", "b-r", 10.0)
    pol._reserved["m"], pol._reserved_base["m"] = (2,), 0  # what _take_gpus leaves once its victim has drained
    d.apply(A.StartInstance("m0", "m", (5,)), 10.9)
    d.instance_failed("m0", 10.9, RuntimeError("out of memory"))  # m's starts back off until 11.4 s
    d.submit("m", "m-r", 10.9)
    acts = pol.tick(st, 11.0)
    assert any(type(a) is A.StartInstance and a.model == "m" for a in acts)  # the driver will refuse it
    assert any(type(a) is A.StartInstance and a.model == "a" for a in acts)  # the merge is made...
    assert not any(type(a) is A.StartInstance and a.model != "m" and 2 in a.gpus for a in acts)  # ...not on GPU 2
