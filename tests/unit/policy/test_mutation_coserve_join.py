"""Co-serving's join rules that mutation testing found unpinned (``policy.coserve``): a GPU's room for a joiner is
counted to the byte (``_room``, ``_evictions``); a host converting in place takes no joiner; ``keeps_last`` keeps a
quiet model's last instance only where a host has a free place for it; and where GPUs suffice a join leaves an
idle group to split out to. All through the real driver (instant executor)."""

import numpy as np
import pytest

from warmserve.geometry import PAGE_BYTES
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo, kv_blocks_for

GiB = 1 << 30
GPU = 72 * GiB - 1  # one byte short of whole pages: every other figure here is whole pages (PAGE_BYTES)


def _model(name, shard=13_500_000_000):
    """A 7B-like tp-1 model (``shard`` bytes of weights), 0.5 MiB of KV per token, 35 ms prefill, 15 ms step."""
    return ModelInfo(name, shard, 1, 524_288, 0.035, 0.015)


def _host_with_prewarm(p_shard: int):
    """Two GPUs; `a` opens a co-served host on GPU 0 at its first request, and a prewarm of `p` (``p_shard``
    bytes) is loaded beside it."""
    models = [_model("a"), _model("b"), _model("p", p_shard)]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=GPU)
    pol = make_policy("warmserve", models=models,
                      config=PolicyConfig(replan_s=1e9, window_s=1e6, coserve_always=True))
    d = instant_driver(pol, st)
    d.submit("a", "a0", 0.0)
    (ia,) = st.instances.values()
    assert ia.instance_id in pol._co.ids and ia.gpus == (0,)
    d.apply(A.Prewarm("p/x", "p", ia.gpus, 1.0), 0.1)
    return st, pol, ia


def _gap() -> int:
    """Bytes of GPU 0 left beside `a`'s shard and whole KV share, less what `b` needs to join (its shard and its
    whole KV share at its kv_fraction)."""
    st, pol, ia = _host_with_prewarm(1)
    a, b = st.models["a"], st.models["b"]
    need = b.shard_bytes + kv_blocks_for(st, "b", ia.gpus, pol._co.kv_fraction("b", GPU)) * b.kv_block_bytes
    return GPU - (a.shard_bytes + ia.kv_blocks_total * a.kv_block_bytes) - need


@pytest.mark.parametrize("p_extra, evict", [(1, ("p/x",)), (1 - PAGE_BYTES, ())])
def test_a_joiner_evicts_a_prewarm_exactly_when_the_room_falls_short_by_a_byte(p_extra, evict):
    """A prewarm whose shard (whole pages) leaves the joiner one byte short of its need is evicted; one a page
    smaller stays (the host's shares and the prewarm's shard are counted to the byte, nothing else is)."""
    gap = _gap()
    assert gap > 0 and (gap + 1) % PAGE_BYTES == 0
    st, pol, _ = _host_with_prewarm(gap + p_extra)
    assert st.models["p"].shard_bytes == gap + p_extra
    act = pol.route(st, "b", 0.2)
    assert type(act) is A.StartInstance and act.gpus == (0,) and act.evict == evict
    assert act.instance_id in pol._co.ids


def test_a_host_converting_in_place_takes_no_joiner_until_it_is_dedicated():
    """`a` (30 in flight) outgrows the host it shares with `b` on GPU 0, with no GPU free: `b` moves to `c`'s host
    on GPU 1 (``vacate``), and GPU 0 is marked converting for `a` across the ticks the move takes. Once `b`'s old
    instance has drained, `a` is alone on GPU 0 with room for a second model, yet a request of `d` (no instance)
    does not join it: the next tick dedicates `a1` in place."""
    models = [ModelInfo(n, 10 * GiB, 1, 1 << 17, decode_s_per_token=0.015) for n in "abcd"]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=80 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(
        replan_s=1e9, window_s=1e6, coserve_always=True, coserve_max_models=2))
    d = instant_driver(pol, st, start_ready=False)
    for iid, m, g in (("a1", "a", (0,)), ("b1", "b", (0,)), ("c1", "c", (1,))):
        d.apply(A.StartInstance(iid, m, g, kv_fraction=0.4), 0.0)
        d.instance_ready(iid, 0.0)
        pol._co.ids.add(iid)
    pol._plan_window = 0
    d.submit("b", "b0", 1.0)
    d.submit("c", "c0", 1.0)
    for k in range(30):
        d.submit("a", f"a{k}", 10.0)
    for t in range(11, 16):
        d.tick(float(t))
        assert pol._co.converting == {(0,): "a"}, t
    (moved,) = [i for i in st.instances.values() if i.model == "b" and not i.ready]
    assert moved.gpus == (1,)
    d.instance_ready(moved.instance_id, 16.0)
    d.tick(17.0)
    d.request_finished("b", "b1", 17.5)
    assert sorted(i.instance_id for i in st.instances.values() if i.gpus == (0,)) == ["a1"]
    assert pol.route(st, "d", 17.6) is None
    assert pol.tick(st, 18.0) == [A.Dedicate("a1")]
    assert pol._co.converting == {}


def test_a_quiet_models_last_instance_is_not_kept_for_a_full_host():
    """Over-subscribed (`a` and `b` fill the only host, two models per host at most), `c` runs dedicated on GPU 1
    with no load but a forecast, and `d` waits with no instance. `c` could join no host (the one there is full),
    so its last instance is not kept for a merge (``keeps_last``): once `c` has been quiet the load window it stops,
    its weights kept, and `d` opens a host on GPU 1 in the same tick, evicting them."""
    hour = 3600.0
    models = [ModelInfo(n, 10 * GiB, 1, 1 << 17, decode_s_per_token=0.015) for n in "abcd"]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=80 * GiB)
    t = np.arange(48) * hour
    pol = make_policy("warmserve", models=models, history={"c": (t, np.full(48, 1.0), np.full(48, 2.0))},
                      config=PolicyConfig(replan_s=1e9, window_s=hour, coserve_always=True, coserve_max_models=2))
    d = instant_driver(pol, st)
    t0 = 2 * 86400.0
    for iid, m, g, co in (("a1", "a", (0,), True), ("b1", "b", (0,), True), ("c1", "c", (1,), False)):
        d.apply(A.StartInstance(iid, m, g, kv_fraction=0.4 if co else 1.0), t0)
        d.instance_ready(iid, t0)
        if co:
            pol._co.ids.add(iid)
    pol._plan_window = pol.window_of(t0)
    for m in "abd":
        d.submit(m, f"{m}0", t0 + 1)
    assert st.queued("d") == 1 and not pol._co.could_join(st, "c")
    for k in range(2, 5):
        acts = pol.tick(st, t0 + k)
        assert not any(type(a) in (A.StopInstance, A.StartInstance) for a in acts)
        for a in acts:
            d.apply(a, t0 + k)
    acts = pol.tick(st, t0 + 5)
    assert [(type(a), a.instance_id) for a in acts if type(a) in (A.StopInstance, A.StartInstance)] == [
        (A.StopInstance, "c1"), (A.StartInstance, "d/i2")]
    (start,) = [a for a in acts if type(a) is A.StartInstance]
    assert start.gpus == (1,) and start.evict == ("c/p1",)


def test_where_gpus_suffice_a_join_leaves_an_idle_group_to_split_out_to():
    """Not over-subscribed (`a` and `e` quiet, `b` the only model with demand, 2 GPUs): `a` serves alone on a host
    on GPU 0 and `e` runs dedicated on GPU 1. `b` may not join `a`'s host, as no idle GPU would be left for it to
    split out to; with GPU 1 idle instead, it joins."""
    for e_gpu, joins in ((1, False), (None, True)):
        models = [_model("a"), _model("b"), _model("e")]
        st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=72 * GiB)
        pol = make_policy("warmserve", models=models,
                          config=PolicyConfig(replan_s=1e9, window_s=1e6, coserve_always=True))
        d = instant_driver(pol, st)
        d.submit("a", "a0", 0.0)
        d.request_finished("a", "a/i1", 0.1)
        if e_gpu is not None:
            d.apply(A.StartInstance("e/x1", "e", (e_gpu,)), 0.0)
        assert [i.gpus for i in st.instances.values() if i.model == "a"] == [(0,)]
        d.tick(10.0)
        assert not pol._co.oversubscribed
        act = pol.route(st, "b", 10.5)
        if joins:
            assert type(act) is A.StartInstance and act.gpus == (0,) and act.instance_id in pol._co.ids
        else:
            assert act is None


def test_consolidate_opens_no_host_for_a_model_whose_quiet_partner_never_co_serves():
    """With consolidate, `a` (7B) and `g` (a 40 GB shard: one per 72 GiB GPU, so never co-served) run quiet on
    GPUs 0 and 1 of four. A host opened for `a` on an idle GPU could take no partner: nothing moves."""
    models = [_model("a"), _model("g", shard=40 * 10**9)]
    st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(
        replan_s=1e9, window_s=1e6, coserve_always=True, consolidate=True))
    assert pol._co.models_per_host("g", 72 * GiB) == 1 and pol._co.models_per_host("a", 72 * GiB) >= 2
    d = instant_driver(pol, st)
    d.apply(A.StartInstance("a0", "a", (0,)), 0.0)
    d.apply(A.StartInstance("g0", "g", (1,)), 0.0)
    for t in range(10, 30):
        for m in "ag":
            d.submit(m, f"{m}{t}", float(t))
        d.tick(t + 0.2)
        for i in list(st.instances.values()):
            for _ in range(i.in_flight):
                d.request_finished(i.model, i.instance_id, t + 0.5)
    assert {i.instance_id for i in st.instances.values()} == {"a0", "g0"}


def test_a_host_converts_in_place_with_no_idle_gpu_left_where_gpus_suffice():
    """Three GPUs, not over-subscribed (`e`, dedicated on GPU 2, is quiet but kept: it served within
    last_instance_hold_s). `a` outgrows the host on GPU 0 it shares with `b`, and no GPU is idle: `b` moves to
    `c`'s host on GPU 1 although that leaves no idle group (a move off a converting host needs none), and GPU 0
    is marked converting for `a`."""
    models = [ModelInfo(n, 10 * GiB, 1, 1 << 17, decode_s_per_token=0.015) for n in "abce"]
    st = ClusterState.uniform(1, models, gpus_per_server=3, gpu_bytes=80 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(
        replan_s=1e9, window_s=1e6, coserve_always=True, coserve_max_models=2, last_instance_hold_s=60.0))
    d = instant_driver(pol, st, start_ready=False)
    for iid, m, g in (("a1", "a", (0,)), ("b1", "b", (0,)), ("c1", "c", (1,)), ("e1", "e", (2,))):
        d.apply(A.StartInstance(iid, m, g, kv_fraction=1.0 if m == "e" else 0.4), 0.0)
        d.instance_ready(iid, 0.0)
        if m != "e":
            pol._co.ids.add(iid)
    pol._plan_window = 0
    for m in "bce":
        d.submit(m, f"{m}0", 1.0)
    d.tick(1.5)
    d.request_finished("e", "e1", 2.0)
    for k in range(30):
        d.submit("a", f"a{k}", 10.0)
    starts = []
    for t in range(2, 16):
        acts = pol.tick(st, t + 0.5)
        starts += [(a.model, a.gpus, pol._co.oversubscribed) for a in acts if type(a) is A.StartInstance]
        for a in acts:
            d.apply(a, t + 0.5)
    assert starts == [("b", (1,), False)]
    assert pol._co.converting == {(0,): "a"} and "e1" in st.instances
