"""GPUs of different sizes in one cluster (a small worker joins, a mixed fleet): an instance goes only where its
shard and a KV block fit, and co-serving sizes each host by its own GPUs, never by the smallest live one. Also the
co-serving sizing's inputs that once divided by zero (coserve_context_tokens = 0, kv_bytes_per_token = 0). All
through the real policy, Board and driver (instant executor)."""

from collections import deque

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.coserve import CoServing
from warmserve.policy.instant import instant_driver
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, GpuState, ModelInfo, PrewarmState, ServerState

GiB = 1 << 30


def _7b(name, kv_bytes_per_token=524_288):
    """Llama-2 7B as the policy knows it: 13.5 GB, tp 1, 0.5 MiB of KV per token, 35 ms prefill, 15 ms step."""
    return ModelInfo(name, 13_500_000_000, 1, kv_bytes_per_token, 0.035, 0.015)


def one_server(sizes, models):
    """One server whose GPUs have ``sizes`` bytes each (also test_arbitration_rules.py's)."""
    gpus = [GpuState(g, 0, b) for g, b in enumerate(sizes)]
    return ClusterState([ServerState(0, tuple(range(len(sizes))))], gpus, {m.name: m for m in models},
                        queues={m.name: deque() for m in models})


def _free_ok(st):
    return all(f >= 0 for f in st.free_bytes_on())


def test_cold_start_skips_idle_gpus_too_small_for_a_shard_and_a_kv_block():
    m = ModelInfo("a", 13 * GiB, 1, kv_bytes_per_token=512 << 10)
    st = one_server([10 * GiB, 80 * GiB], [m])
    assert st.unservable() == {}
    d = instant_driver(make_policy("warmserve", models=[m], config=PolicyConfig()), st)
    d.submit("a", "r0", 0.0)
    (inst,) = st.instances.values()
    assert inst.gpus == (1,), "the 10 GiB GPU cannot hold a 13 GiB shard"
    assert inst.kv_blocks_total > 0 and _free_ok(st)
    # tp 2: the group is two GPUs that each hold a shard and a block, not the first idle pair
    m2 = ModelInfo("b", 40 * GiB, 2, kv_bytes_per_token=512 << 10)
    st2 = one_server([16 * GiB, 16 * GiB, 80 * GiB, 80 * GiB], [m2])
    gpus, used, evicted = Board(st2).choose_for_instance("b")
    assert gpus == (2, 3) and used is None and evicted == []
    # no GPU holds it: no instance at all (rather than one with no KV cache)
    assert Board(one_server([10 * GiB, 10 * GiB], [m])).choose_for_instance("a") is None


def test_a_prewarm_on_a_gpu_with_no_room_for_a_kv_block_is_not_started_from():
    m = _7b("a")
    # the shard fits on GPU 0 (a prewarm may sit there), a KV block beside it does not
    st = one_server([m.shard_bytes + m.kv_block_bytes // 2, 80 * GiB], [m])
    st.prewarms["p0"] = PrewarmState("p0", "a", (0,), progress=1.0, score=1.0)
    gpus, used, evicted = Board(st).choose_for_instance("a")
    assert gpus == (1,) and used is None and evicted == []


def _two_co_served_then_small_gpu(names="ab"):
    """Two light 7B models co-serve on one 72 GiB GPU (the cluster is over-subscribed); then an 8 GiB GPU joins
    (too small for one shard)."""
    ms = [_7b(n) for n in names]
    st = ClusterState.uniform(1, ms, gpus_per_server=1, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=ms, config=PolicyConfig(colocate_when_oversubscribed=False))
    d = instant_driver(pol, st)
    st.queues["a"].extend(["a0", "a1"])
    st.queues["b"].extend(["b0", "b1"])
    d.tick(1.0)
    assert {i.model for i in st.instances.values() if i.instance_id in pol._co.ids} == {"a", "b"}
    assert all(i.gpus == (0,) for i in st.instances.values())
    d.add_gpus("small-box", [8 * GiB])
    d.route_all(1.5)
    return d, st, pol


def test_a_small_gpu_joining_leaves_co_served_routing_sized_by_its_host():
    d, st, pol = _two_co_served_then_small_gpu()
    d.tick(2.0)
    d.submit("a", "a9", 2.5)  # raised ZeroDivisionError: the cap was sized for the 8 GiB GPU
    d.tick(3.0)
    (ia,) = [i for i in st.instances.values() if i.model == "a"]
    assert ia.in_flight == 3 and st.queued("a") == 0
    co = pol._co
    assert co.route_cap(st, "a") == co.route_cap(st, "a", ia) == co.seq_capacity("a", 72 * GiB) > 3


def test_a_model_joins_a_host_sized_by_its_own_gpu_when_a_small_gpu_is_live():
    d, st, pol = _two_co_served_then_small_gpu("abc")
    d.submit("c", "c0", 2.0)
    (ic,) = [i for i in st.instances.values() if i.model == "c"]
    # on the 72 GiB host beside a and b (it holds 3 such models), not on the 8 GiB GPU
    assert ic.gpus == (0,) and ic.instance_id in pol._co.ids
    assert ic.kv_blocks_total > 0 and _free_ok(st)
    assert pol._co.kv_fraction("c", 72 * GiB) == pytest.approx(
        ic.kv_blocks_total * st.models["c"].kv_block_bytes / (72 * GiB - st.models["c"].shard_bytes), rel=0.02)


def test_a_new_host_opens_on_a_gpu_that_holds_two_shards():
    ms = [_7b("a"), _7b("b")]
    # GPU 0 holds one 7B shard with its KV (a dedicated instance) but not two (a host); GPU 1 holds three
    st = one_server([20 * GiB, 72 * GiB], ms)
    co = CoServing(PolicyConfig(coserve_always=True), st.models)
    assert co.models_per_host("a", 20 * GiB) < 2 <= co.models_per_host("a", 72 * GiB)
    co.update(st, {"a": 0.1, "b": 0.1}, {"a": 0.1, "b": 0.1}, {"a": 1.0, "b": 1.0})
    act = co.join(st, Board(st), "a", set(), new_host=True, new_id=lambda model, kind: f"{model}/{kind}1")
    assert act is not None and act.gpus == (1,)
    assert act.kv_fraction == co.kv_fraction("a", 72 * GiB) < 1


def test_sizing_on_a_gpu_that_holds_under_two_shards_does_not_divide_by_zero():
    m = _7b("a")
    co = CoServing(PolicyConfig(), {"a": m})
    for gpu_bytes in (0, 8 * GiB, m.shard_bytes, 20 * GiB):
        assert co.models_per_host("a", gpu_bytes) < 2
        assert 0 < co.kv_fraction("a", gpu_bytes) < 1
        assert co.seq_capacity("a", gpu_bytes) >= 1
        assert co.kv_fits("a", gpu_bytes, 1.0, 1.0) in (True, False)


def test_coserve_context_tokens_must_be_at_least_one():
    with pytest.raises(InvalidArgumentError, match=r"coserve_context_tokens must be >= 1.*got 0.*Fix"):
        PolicyConfig(coserve_context_tokens=0)
    with pytest.raises(InvalidArgumentError, match="got -5"):
        PolicyConfig(coserve_context_tokens=-5)
    assert PolicyConfig(coserve_context_tokens=1).coserve_context_tokens == 1


def test_models_with_unknown_kv_bytes_per_token_co_serve_and_route():
    # ModelInfo's default kv_bytes_per_token is 0: two such models co-serve on one GPU (over-subscribed)
    ms = [ModelInfo(n, 4 * GiB) for n in "ab"]
    st = ClusterState.uniform(1, ms, gpus_per_server=1, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=ms, config=PolicyConfig())
    d = instant_driver(pol, st)
    st.queues["a"].extend(["a0", "a1"])
    st.queues["b"].extend(["b0", "b1"])
    d.tick(1.0)  # raised ZeroDivisionError routing to the co-served instances
    assert sorted((i.model, i.in_flight) for i in st.instances.values()) == [("a", 2), ("b", 2)]
    assert all(i.instance_id in pol._co.ids for i in st.instances.values())
    co = pol._co
    assert co.seq_capacity("a", 72 * GiB) >= 1 and co.step_s("a", 10.0) > 0 and co.kv_fits("a", 72 * GiB, 1.0)


def test_a_shared_layout_sizes_each_group_by_its_own_gpus():
    """`shared`'s layout (``colocation.plan_shared``, also warmserve's colocation) on an 80 GiB and a 24 GiB GPU
    with three 7Bs: the big GPU's weight room (80% of it) holds two 13.5 GB shards beside the small one's one.
    Sized by the smallest GPU everywhere, as before, every group held one shard and the third model got no
    instance (UnplacedModelError); and each group's KV shares add up to what its own GPU leaves."""
    from warmserve.policy.colocation import plan_shared
    from warmserve.policy.state import kv_blocks_for

    models = [_7b(n) for n in "abc"]
    st = one_server([80 * GiB, 24 * GiB], models)
    infos = {m.name: m for m in models}
    demand = {"a": 3.0, "b": 2.0, "c": 1.0}
    plan = plan_shared(st, infos, ["a", "b", "c"], demand)
    hosted = {g: [m for m, _ in h] for g, h in plan}
    assert sorted(len(v) for v in hosted.values()) == [1, 2] and hosted[(1,)] != [] and len(hosted[(0,)]) == 2
    for gpus, h in plan:
        size = st.gpus[gpus[0]].total_bytes
        kv = size - sum(infos[m].shard_bytes for m, _ in h)
        assert sum(f * (size - infos[m].shard_bytes) for m, f in h) == pytest.approx(kv)
        for m, f in h:
            assert kv_blocks_for(st, m, gpus, f) >= 1


def test_the_default_shared_layout_counts_groups_by_the_largest_gpus():
    """Four 80 GiB GPUs and one 24 GiB, two tp-2 models of 30 GB shards and three 7Bs: the layout without a search
    asks each class for at least the groups its shards need. Counted by the smallest GPU (24 GiB, where no 30 GB
    shard fits) it asked for two tp-2 groups and three tp-1 groups, five GPUs too many, and the layout was refused
    (found in review); by the largest, every model gets an instance."""
    from warmserve.policy.colocation import plan_shared

    big = [ModelInfo(n, 60_000_000_000, 2, 819_200, 0.07, 0.02) for n in ("x", "y")]
    small = [_7b(n) for n in "abc"]
    st = one_server([80 * GiB] * 4 + [24 * GiB], big + small)
    infos = {m.name: m for m in big + small}
    order = ["x", "y", "a", "b", "c"]
    plan = plan_shared(st, infos, order, {m: 1.0 for m in infos})
    assert {m for _, h in plan for m, _ in h} == set(infos)
    for gpus, h in plan:
        assert all(st.gpus[g].total_bytes * 0.8 >= sum(infos[m].shard_bytes for m, _ in h) for g in gpus)


def test_co_serving_pairs_are_sized_by_the_smallest_live_gpu():
    """``HostSizing.gpu_bytes``: a pair that fits the smallest live GPU fits anywhere; a lost GPU does not count."""
    st = one_server([40 * GiB, 80 * GiB, 20 * GiB], [_7b("a")])
    assert CoServing.gpu_bytes(st) == 20 * GiB
    st.gpus[2].gone = True
    assert CoServing.gpu_bytes(st) == 40 * GiB
    for g in st.gpus:
        g.gone = True
    assert CoServing.gpu_bytes(st) == 0


def test_a_tensor_parallel_model_holds_as_many_sequences_as_one_with_its_per_gpu_shard_and_kv():
    """A tp-2 model's KV per token is split over its two GPUs: per GPU it is the tp-1 model with half its weights
    and half its KV bytes per token, and takes as many sequences."""
    tp2 = ModelInfo("b", 26 * GiB, 2, 819_200)
    tp1 = ModelInfo("h", 13 * GiB, 1, 409_600)
    assert tp2.shard_bytes == tp1.shard_bytes
    co = CoServing(PolicyConfig(colocate_tp=True), {"b": tp2, "h": tp1})
    for gpu_bytes in (40 * GiB, 80 * GiB):
        assert co.seq_capacity("b", gpu_bytes) == co.seq_capacity("h", gpu_bytes) > 1
