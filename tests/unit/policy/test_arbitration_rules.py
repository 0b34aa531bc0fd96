"""The GPU arbitration rules of ``arbitration`` called directly on real cluster states and boards: which group a
wanting model may take (room for a shard and a KV block on each GPU), the kept scans they share, and (through the
driver) time-sharing with reclaim off."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.arbitration import GroupScans, preemption_victims, reclaim_victims
from warmserve.policy.instant import instant_driver
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, InstanceState, ModelInfo

from test_policy_mixed_gpus import one_server

GiB = 1 << 30


def _cluster(sizes, models, placed):
    """One server whose GPUs have ``sizes`` bytes each; ``placed``: (instance, model, GPU) ready since t = 0."""
    st = one_server(sizes, models)
    for iid, model, g in placed:
        st.instances[iid] = InstanceState(iid, model, (g,), 0.0, 0.0)
    return st


def _small_gpu_beside_a_large_one():
    """``big`` wants a GPU. GPU 0 holds big's shard but not a KV block beside it, and serves the light model x;
    GPU 1 (80 GiB) serves the heavier y. Taking GPU 0 would harm least, but big could never start there."""
    big = ModelInfo("big", 20 * GiB, 1, 512 << 10, 0.035, 0.015)
    light = [ModelInfo(n, 2 * GiB, 1, 512 << 10, 0.035, 0.015) for n in ("x", "y")]
    st = _cluster([big.shard_bytes + big.kv_block_bytes // 2, 80 * GiB], [big, *light],
                  [("x0", "x", 0), ("y0", "y", 1)])
    return st, Board(st)


def test_time_sharing_takes_only_a_group_whose_gpus_hold_the_shard_and_a_kv_block():
    st, board = _small_gpu_beside_a_large_one()
    got = preemption_victims(st, board, "big", 100.0, {"big": 50.0, "x": 1.0, "y": 10.0}, set(), 30.0)
    assert got is not None and got[2] == (1,) and [v.instance_id for v in got[1]] == ["y0"]


def test_a_starved_reclaim_takes_only_a_group_whose_gpus_hold_the_shard_and_a_kv_block():
    """x has demand to spare (2 instances for 1 wanted), y none: big takes one of x's, on GPU 2, not on the small
    GPU 0 that ranks first otherwise."""
    big = ModelInfo("big", 20 * GiB, 1, 512 << 10, 0.035, 0.015)
    light = [ModelInfo(n, 2 * GiB, 1, 512 << 10, 0.035, 0.015) for n in ("x", "y")]
    st = _cluster([big.shard_bytes + big.kv_block_bytes // 2, 80 * GiB, 80 * GiB, 80 * GiB], [big, *light],
                  [("x0", "x", 0), ("y0", "y", 1), ("x1", "x", 2), ("y1", "y", 3)])
    have, demand = {"big": 0, "x": 2, "y": 2}, {"big": 1.0, "x": 1.0, "y": 10.0}
    got = reclaim_victims(st, Board(st), "big", 100.0, have, demand, set(), 30.0, set(), 1.6, starved=True)
    assert got is not None and got[2] == (2,) and [v.instance_id for v in got[1]] == ["x1"]


def test_kept_group_scans_are_reused_until_the_board_or_the_stopping_set_changes():
    """The point of ``GroupScans``: one scan per tp a tick, not one per wanting model (40% of a 200-model run)."""
    st, board = _small_gpu_beside_a_large_one()
    scans = GroupScans(st)
    first = scans.get(board, 1, set(), 100.0, 30.0)
    assert scans.get(board, 1, set(), 100.0, 30.0) is first
    assert scans.get(board, 1, {"x0"}, 100.0, 30.0) is not first
    again = scans.get(board, 1, set(), 100.0, 30.0)
    board.stop_instance((1,))
    assert scans.get(board, 1, set(), 100.0, 30.0) is not again


def test_with_reclaim_off_a_model_with_no_instance_still_time_shares():
    """Two GPUs held by busy a (3 in flight) and b (1); c waits with 5 queued. Reclaim off (``reclaim_gpus``) is
    not a reclaim found: time-sharing takes b's GPU once b served preempt_after_s."""
    models = [ModelInfo(n, 10 * GiB, 1, 1 << 19, prefill_s=0.035, decode_s_per_token=0.015) for n in "abc"]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=40 * GiB)
    pol = make_policy("autoscale", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6, reclaim_gpus=False))
    d = instant_driver(pol, st)
    d.apply(A.StartInstance("ia", "a", (0,)), 0.0)
    d.apply(A.StartInstance("ib", "b", (1,)), 0.0)
    for m, n in (("a", 3), ("b", 1)):
        for k in range(n):
            d.submit(m, f"{m}{k}", 0.0)
    for k in range(5):
        st.queues["c"].append(f"c{k}")
    d.tick(31.0)
    assert st.instances["ib"].draining and not st.instances["ia"].draining
