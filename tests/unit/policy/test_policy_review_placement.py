"""Placement and scale-up choices found wrong in review (``policy.placement``): the overlap tie-break among
non-master groups, a cold start's count of the prewarms it evicts, replicas of a model on its own instance's
GPUs (and a co-served start beside its own replica), and the room a stopped instance's GPUs get back."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.core import Policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, GpuState, InstanceState, ModelInfo, PrewarmState, ServerState

GiB = 1 << 30


def _m(name, gib=13, tp=1):
    return ModelInfo(name, gib * GiB, tp=tp, kv_bytes_per_token=512 << 10)


def test_overlap_breaks_ties_among_groups_where_the_replica_is_not_master():
    ms = [_m(n) for n in ("a", "b", "c", "new")]
    st = ClusterState.uniform(1, ms, gpus_per_server=2)
    st.prewarms["a/p1"] = PrewarmState("a/p1", "a", (0,), 1.0, 9.0)  # GPU 0 overlaps 9 + 8 = 17
    st.prewarms["c/p3"] = PrewarmState("c/p3", "c", (0,), 1.0, 8.0)
    st.prewarms["b/p2"] = PrewarmState("b/p2", "b", (1,), 1.0, 2.0)  # GPU 1 overlaps 2
    gpus, evicted = Board(st).place("new/p9", "new", 1.0)  # outranked on both: the least overlap wins
    assert gpus == (1,) and evicted == []


def test_a_cold_start_evicts_the_fewest_replicas_whatever_their_tp():
    small, big, new = _m("small"), _m("big", 138, tp=4), _m("new")
    st = ClusterState.uniform(1, [small, big, new])
    st.prewarms["big/p1"] = PrewarmState("big/p1", "big", (0, 1, 2, 3), 1.0, big.cold_start_s)
    for g in range(4, 8):
        st.prewarms[f"small/p{g}"] = PrewarmState(f"small/p{g}", "small", (g,), 1.0, small.cold_start_s)
    gpus, used, evicted = Board(st).choose_for_instance("new")
    # each idle GPU meets exactly one replica: the one worth least goes, not the 70B one
    assert used is None and len(evicted) == 1 and evicted[0].startswith("small/")
    assert gpus == (int(evicted[0][len("small/p"):]),)


def test_no_replica_of_a_model_goes_onto_its_own_instances_gpus():
    m, o = _m("m"), _m("o")
    st = ClusterState.uniform(1, [m, o], gpus_per_server=2)
    for g, name in ((0, "m"), (1, "o")):
        st.instances[f"i{g}"] = InstanceState(f"i{g}", name, (g,), created_s=0, ready_s=0, kv_blocks_total=400,
                                              kv_blocks_mapped=10)
    b = Board(st)
    assert b.place("m/p1", "m", 1.0)[0] == (1,)  # beside o's instance, not a second copy beside its own
    assert b.place("o/p2", "o", 1.0)[0] == (0,)
    b.stop_instance((0,))
    assert b.place_at("m/p3", "m", (0,), 0.4)  # the stopped instance's weights stay there as a prewarm


def test_a_stopped_instance_gives_each_gpu_its_own_size_back():
    x, y = _m("x", 26, tp=2), _m("y", 60)
    gpus = [GpuState(0, 0, 20 * GiB), GpuState(1, 0, 80 * GiB)]
    st = ClusterState([ServerState(0, (0, 1))], gpus, {"x": x, "y": y})
    inst = st.instances["x/i1"] = InstanceState("x/i1", "x", (0, 1), created_s=0, ready_s=0, kv_blocks_total=10,
                                                kv_blocks_mapped=10)
    pol = make_policy("warmserve", models=[x, y], config=PolicyConfig(retain_stopped=False))
    assert isinstance(pol, Policy)
    b = Board(st)
    pol._stop(st, inst, 100.0, b, [])
    assert list(b.free[0, :2]) == [20 * GiB, 80 * GiB]
    assert b.place("y/p1", "y", 1.0)[0] == (1,)  # a 60 GiB shard fits the 80 GiB GPU


def test_a_co_served_start_takes_its_own_replica_on_the_host_as_a_hit():
    ms = [ModelInfo(n, 13_500_000_000, 1, 524_288, 0.035, 0.015) for n in "abc"]
    st = ClusterState.uniform(1, ms, gpus_per_server=4, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=ms, config=PolicyConfig(replan_s=1e9, window_s=1e6, coserve_always=True))
    d = instant_driver(pol, st)
    d.submit("a", "a0", 0.0)
    d.tick(0.5)
    d.submit("b", "b0", 1.0)
    d.tick(1.5)
    (host,) = {i.gpus for i in st.instances.values()}
    st.prewarms["c/p99"] = PrewarmState("c/p99", "c", host, 1.0, 0.1)
    starts = []
    d.executor.start_instance = lambda inst, act, pw, now_s: starts.append((act, pw))
    d.submit("c", "c0", 2.0)
    (act, pw), = starts
    assert act.gpus == host and act.kv_fraction < 1.0  # it joined the host
    assert act.prewarm_id == "c/p99" and pw is not None and pw.prewarm_id == "c/p99"
    assert not [p for p in st.prewarms.values() if p.model == "c"]


def test_a_large_kv_blocks_failed_search_does_not_stop_a_small_block_model_of_the_same_shard():
    """Found in review: a failed eviction search was remembered by (tp, shard bytes) only, so after a model whose
    KV block cannot fit the GPU at all failed, a model of the same shard with a small block, which evicting a
    lower-score replica lets in, was refused too: no prewarm though the memory was there to take."""
    big_block = ModelInfo("big-block", 13 * GiB, kv_bytes_per_token=640 << 20)
    small_block, low = _m("small-block"), _m("low")
    assert big_block.shard_bytes == small_block.shard_bytes and big_block.kv_block_bytes > 7 * GiB
    st = ClusterState([ServerState(0, (0,))], [GpuState(0, 0, 20 * GiB)],
                      {m.name: m for m in (big_block, small_block, low)})
    st.prewarms["low/p1"] = PrewarmState("low/p1", "low", (0,), 1.0, 1.0)  # 7 GiB left: each needs it evicted
    b = Board(st)
    assert b.place("big-block/p2", "big-block", 5.0) is None  # its shard and one block exceed the 20 GiB GPU
    assert b.place("small-block/p3", "small-block", 3.0) == ((0,), ["low/p1"])
