"""GPUs taken for a tensor-parallel model are taken, and kept, as the whole group it will start on (found in
review): preemption and reclaim reserved only the victims' GPUs, so another model took the group's idle GPU and
was stopped again; a quiet model's last instance stopped for a waiting model its GPU could not serve (now a
policy option, ``last_instance_for_groups``, off by default: measured better for warmserve); and a model
that can never start counted as starving, so route() started no instance for any other model."""

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.arbitration import preemption_victims, reclaim_victims
from warmserve.policy.instant import instant_driver
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, GpuState, ModelInfo, ServerState

GiB = 1 << 30
SMALL_BYTES = 13_500_000_000  # a 13B-like model on one GPU
MID_BYTES = 26 * GiB  # a model of tp 2


def _driver(models, n_gpus, **cfg):
    st = ClusterState.uniform(1, models, gpus_per_server=n_gpus, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(prewarm=False, replan_s=1e9, window_s=1e6,
                                                                      **cfg))
    return instant_driver(pol, st), st, pol


def _fill(d, model, n, now_s, start=0):
    for k in range(n):
        d.submit(model, f"{model}{start + k}", now_s)


def _of(st, model):
    return [i for i in st.instances.values() if i.model == model]


def _busy_small_three(mid_queued):
    """One server of 4 GPUs: `c`, `d`, `e` (tp 1) busy on GPUs 1-3 with 20 requests each, GPU 0 idle, and `b`
    (tp 2) with ``mid_queued`` requests waiting and no instance: no group of two GPUs is free for it."""
    models = [ModelInfo(n, SMALL_BYTES, 1, 524_288) for n in "cde"] + [ModelInfo("b", MID_BYTES, 2, 819_200)]
    d, st, pol = _driver(models, 4)
    for iid, m, g in (("c1", "c", 1), ("d1", "d", 2), ("e1", "e", 3)):
        d.apply(A.StartInstance(iid, m, (g,)), 0.0)
        _fill(d, m, 20, 0.0)
    _fill(d, "b", mid_queued, 0.0)
    assert not _of(st, "b") and st.queued("b") == mid_queued
    return d, st, pol


def test_preemption_returns_the_whole_group_idle_gpus_included():
    d, st, _ = _busy_small_three(0)
    load = {"b": 100.0, "c": 1.0, "d": 5.0, "e": 5.0}
    got = preemption_victims(st, Board(st, {}), "b", 100.0, load, set(), 30.0)
    assert got is not None and [v.instance_id for v in got[1]] == ["c1"] and tuple(got[2]) == (0, 1)


def test_time_sharing_keeps_the_idle_gpu_of_the_group_for_the_waiting_model():
    """`c`'s instance goes for `b`. Before the fix only GPU 1 was reserved: `c`, with no instance now, started
    on GPU 0 (the other half of b's group) at the next tick and was preempted in turn, two more stops and about
    60 s more wait for `b`."""
    d, st, pol = _busy_small_three(40)
    t = 100.0
    while not any(i.draining for i in st.instances.values()):
        assert t < 400.0, "no preemption for b"
        d.tick(t)
        t += 1.0
    assert [i.instance_id for i in st.instances.values() if i.draining] == ["c1"]
    assert pol._reserved == {"b": (0, 1)}
    d.tick(t)  # c waits with no instance: GPU 0 stays free for b
    assert not [i for i in st.instances.values() if 0 in i.gpus]
    for _ in range(20):
        d.request_finished("c", "c1", t + 1.0)
    d.tick(t + 2.0)
    assert [i.gpus for i in _of(st, "b")] == [(0, 1)]


def _reclaim_case():
    """8 GPUs: `big` (tp 2) on GPUs 0-1 with 100 requests (it asks for 3.9 instances); `a` on 2 and 4-7 with a
    load of 80 (3.1 asked, 5 kept); GPU 3 idle. Reclaim takes a's instance on GPU 2: group (2, 3)."""
    models = [ModelInfo("big", 20 * GiB, 2, 1 << 19)] + [ModelInfo(n, 10 * GiB, 1, 1 << 19) for n in "ac"]
    d, st, pol = _driver(models, 8)
    d.apply(A.StartInstance("big1", "big", (0, 1)), 0.0)
    for k, g in enumerate((2, 4, 5, 6, 7)):
        d.apply(A.StartInstance(f"a{k}", "a", (g,)), 0.0)
    _fill(d, "big", 100, 50.0)
    _fill(d, "a", 80, 50.0)
    return d, st, pol


def test_reclaim_returns_the_whole_group_idle_gpus_included():
    d, st, _ = _reclaim_case()
    have = {"big": 1, "a": 5, "c": 0}
    demand = {"big": 100 / 25.6, "a": 80 / 25.6, "c": 0.0}
    got = reclaim_victims(st, Board(st, {}), "big", 50.0, have, demand, set(), 5.0, set(), 1.6, 0.8)
    assert got is not None and [v.instance_id for v in got[1]] == ["a0"] and tuple(got[2]) == (2, 3)


def test_a_reclaimed_group_keeps_its_idle_gpu_from_other_models():
    d, st, pol = _reclaim_case()
    d.tick(50.0)
    assert [i.instance_id for i in st.instances.values() if i.draining] == ["a0"]
    assert pol._reserved == {"big": (2, 3)}
    _fill(d, "c", 1, 50.5)  # before the fix c started on GPU 3, and big waited for a group again
    assert not _of(st, "c") and st.queued("c") == 1
    for _ in range(st.instances["a0"].in_flight):
        d.request_finished("a", "a0", 51.0)
    d.tick(52.0)
    assert sorted(i.gpus for i in _of(st, "big")) == [(0, 1), (2, 3)]


def _idle_last_instance(partner_busy, for_groups=True):
    """`a` idle on GPU 0 (ready since 0 s); `d`, `e` busy on GPUs 2-3; GPU 1 busy with `c` or idle; `b` (tp 2)
    waits with one request and no instance."""
    models = [ModelInfo(n, SMALL_BYTES, 1, 524_288) for n in "acde"] + [ModelInfo("b", MID_BYTES, 2, 819_200)]
    d, st, pol = _driver(models, 4, last_instance_for_groups=for_groups)
    d.apply(A.StartInstance("a1", "a", (0,)), 0.0)
    for iid, m, g in (("c1", "c", 1), ("d1", "d", 2), ("e1", "e", 3)):
        if g == 1 and not partner_busy:
            continue
        d.apply(A.StartInstance(iid, m, (g,)), 0.0)
        _fill(d, m, 20, 0.0)
    st.queues["b"].append("b0")  # waiting, not yet routed (as while no group was free)
    return d, st


def test_a_last_instance_is_not_stopped_for_a_model_its_gpu_cannot_serve():
    """With ``last_instance_for_groups``. Before it `a` stopped at the first tick (another model wanted GPUs),
    GPU 0 stayed idle, and `b` still had no group: `a`'s next request waited for a restart for nothing."""
    d, st = _idle_last_instance(partner_busy=True)
    d.tick(100.0)
    assert not st.instances["a1"].draining and not _of(st, "b")


def test_by_default_a_last_instance_stops_whenever_another_model_wants_gpus():
    """The default (the earlier rule, measured better for warmserve: a stopped instance's weights stay a
    prewarm, and a GPU freed ahead of a burst starts it sooner)."""
    d, st = _idle_last_instance(partner_busy=True, for_groups=False)
    d.tick(100.0)
    assert "a1" not in st.instances or st.instances["a1"].draining


@pytest.mark.parametrize("for_groups", [True, False])
def test_a_last_instance_still_stops_when_its_gpu_completes_a_group(for_groups):
    d, st = _idle_last_instance(partner_busy=False, for_groups=for_groups)
    d.tick(100.0)
    assert "a1" not in st.instances and [i.gpus for i in _of(st, "b")] == [(0, 1)]


def test_with_last_instance_for_groups_the_scale_in_frees_the_group_before_time_sharing_could():
    """At 10 s `a` served its minimum lifetime (5 s) but not preempt_after_s (30 s): only the scale-in's group rule
    (``_groups_to_free``: GPU 0 completes b's idle pair) stops it, and b starts on (0, 1) in the same tick."""
    d, st = _idle_last_instance(partner_busy=False, for_groups=True)
    d.tick(10.0)
    assert "a1" not in st.instances and [i.gpus for i in _of(st, "b")] == [(0, 1)]


@pytest.mark.parametrize("big", [ModelInfo("big", 138 * GiB, 4, 327_680),  # tp wider than any server
                                 ModelInfo("big", 200 * GiB, 1, 524_288)],  # its shard fits no GPU
                         ids=["tp-too-wide", "shard-too-big"])
def test_a_model_that_can_never_start_does_not_hold_back_route_starts(big):
    """Before the fix `big` counted as starving, and `a`'s first request waited for the next tick."""
    models = [ModelInfo("a", SMALL_BYTES, 1, 524_288), big]
    d, st, _ = _driver(models, 2)
    assert list(st.unservable()) == ["big"]
    d.tick(0.0)
    d.submit("big", "rb", 0.5)
    d.submit("a", "ra", 0.6)
    assert [i.model for i in st.instances.values()] == ["a"] and st.queued("a") == 0 and st.queued("big") == 1


@pytest.mark.parametrize("big", [ModelInfo("big", MID_BYTES, 4, 819_200), ModelInfo("big", 200 * GiB, 1, 524_288)],
                         ids=["tp-too-wide", "shard-too-big"])
def test_no_instance_is_stopped_for_a_model_that_can_never_start(big):
    """Found in review: time-sharing stopped one of `a`'s busy instances for `big` (again and again: 9 times in
    300 s in another run) and kept the freed GPU reserved for a model no GPU can hold."""
    d, st, pol = _driver([ModelInfo("a", SMALL_BYTES, 1, 524_288), big], 2)
    d.tick(0.0)
    _fill(d, "big", 5, 0.5)
    _fill(d, "a", 40, 0.6)
    for k in range(1, 300):
        d.tick(float(k))
        assert not [i.instance_id for i in _of(st, "a") if i.draining], k
    assert len(_of(st, "a")) == 2 and "big" not in pol._reserved


def test_no_group_is_taken_on_gpus_the_waiting_model_cannot_start_on():
    """Mixed GPU sizes. Found in review: time-sharing stopped `e` for `b` on the two 40 GiB GPUs, where `b`'s 45
    GiB shards never fit, and reserved both for `b` for good: `e` queued while GPUs 0 and 1 stood idle."""
    b = ModelInfo("b", 90 * GiB, 2, 819_200)  # 45 GiB a shard: only the 80 GiB GPUs hold one
    models = [ModelInfo(n, SMALL_BYTES, 1, 524_288) for n in "cde"] + [b]
    st = ClusterState([ServerState(0, (0, 1)), ServerState(1, (2, 3))],
                      [GpuState(0, 0, 40 * GiB), GpuState(1, 0, 40 * GiB), GpuState(2, 1, 80 * GiB),
                       GpuState(3, 1, 80 * GiB)], {m.name: m for m in models})
    pol = make_policy("warmserve", models=models, config=PolicyConfig(prewarm=False, replan_s=1e9, window_s=1e6))
    d = instant_driver(pol, st)
    for iid, m, g in (("c1", "c", 2), ("d1", "d", 3), ("e1", "e", 0)):
        d.apply(A.StartInstance(iid, m, (g,)), 0.0)
    _fill(d, "c", 20, 0.0)
    _fill(d, "d", 20, 0.0)
    _fill(d, "b", 40, 0.0)
    _fill(d, "e", 1, 0.0)
    n = 1
    for t in range(100, 400):
        d.tick(float(t))
        for inst in _of(st, "e"):
            for _ in range(inst.in_flight):
                d.request_finished("e", inst.instance_id, t + 0.5)
        if t % 5 == 0:
            _fill(d, "e", 1, t + 0.6, start=n)
            n += 1
        assert not set(pol._reserved.get("b", ())) & {0, 1}, t
    assert st.queued("e") == 0


def test_no_quiet_last_instance_stops_for_a_model_no_gpu_can_hold():
    """Found in review: under the default rule, `a`'s idle last instance stopped for `big`, which no GPU holds."""
    a, big = ModelInfo("a", SMALL_BYTES, 1, 524_288), ModelInfo("big", 200 * GiB, 1, 524_288)
    d, st, _ = _driver([a, big], 2, last_instance_for_groups=False)
    d.apply(A.StartInstance("a1", "a", (0,)), 0.0)
    d.submit("big", "rb", 1.0)
    for t in range(2, 400):
        d.tick(float(t))
        assert "a1" in st.instances and not st.instances["a1"].draining, t
