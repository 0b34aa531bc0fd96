"""Defragmenting (``arbitration.relocations``): when a tensor-parallel model's next instance finds enough idle GPUs
in the cluster but not on one server, light instances move (make before break) so that one server has them.
Through the real driver and policy."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _cluster(others_prewarmed=(6,), others_score=1.0, **cfg):
    """Three servers of 4 GPUs. Server 0: `big` (tp 4) serves. Server 1: `a` on GPU 4, `b` on GPU 5, GPUs 6-7
    idle, `a` prewarmed on the GPUs in ``others_prewarmed`` (score ``others_score``). Server 2: `c` on GPU 8, GPUs
    9-11 idle, `big` prewarmed on 8-11 (score 100). Five GPUs idle, at most 3 on a server. Each instance has a
    request in flight; starts wait for the test's ``instance_ready``."""
    models = [ModelInfo("big", 40 * GiB, 4, 1 << 19, prefill_s=0.1), ModelInfo("a", 10 * GiB, 1, 1 << 19),
              ModelInfo("b", 10 * GiB, 1, 1 << 19), ModelInfo("c", 10 * GiB, 1, 1 << 19)]
    st = ClusterState.uniform(3, models, gpus_per_server=4, gpu_bytes=40 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6, **cfg))
    d = instant_driver(pol, st, start_ready=False)
    d.apply(A.Prewarm("pbig", "big", (8, 9, 10, 11), 100.0), 0.0)
    for g in others_prewarmed:
        d.apply(A.Prewarm(f"pa{g}", "a", (g,), others_score), 0.0)
    for iid, m, gpus in (("big1", "big", (0, 1, 2, 3)), ("a1", "a", (4,)), ("b1", "b", (5,)), ("c1", "c", (8,))):
        d.apply(A.StartInstance(iid, m, gpus), 0.0)
        d.instance_ready(iid, 0.0)
        d.submit(m, f"{iid}-r", 1.0)
    pol._plan_window = 0  # the test's prewarm stands: no plan runs
    return d, st


def test_a_light_instance_moves_make_before_break_so_the_big_model_finds_a_server_with_room():
    d, st = _cluster()
    d.tick(100.0)
    (new,) = [i for i in st.instances.values() if i.model == "c" and i.instance_id != "c1"]
    # the fewest moves: c1 off server 2, onto server 1, and not onto a's prewarm (it would be evicted)
    assert new.gpus == (7,) and not new.ready and "pa6" in st.prewarms
    d.tick(100.5)
    assert not st.instances["c1"].draining  # it serves until its replacement does
    d.instance_ready(new.instance_id, 101.0)  # the driver ticks: c1 stops, and drains its request
    assert st.instances["c1"].draining
    d.request_finished("c", "c1", 102.0)
    assert "c1" not in st.instances and d.policy._idle_group(st, 102.0, 4)
    for k in range(40):  # a burst for `big`, past B on its instance: the next one is a hit on server 2
        d.submit("big", f"big-{k}", 103.0)
    assert sorted(i.gpus for i in st.instances.values() if i.model == "big") == [(0, 1, 2, 3), (8, 9, 10, 11)]
    assert "pbig" not in st.prewarms


def test_nothing_moves_with_the_option_off_before_the_minimum_lifetime_or_onto_another_models_prewarm():
    for case, now in ((dict(defragment=False), 100.0), ({}, 4.0),
                      (dict(others_prewarmed=(6, 7), defragment_over_prewarms=False), 100.0)):
        d, st = _cluster(**case)
        d.tick(now)
        assert sorted(i.instance_id for i in st.instances.values()) == ["a1", "b1", "big1", "c1"], case
        assert not any(i.draining for i in st.instances.values())
        assert not d.policy._idle_group(st, now, 4)


def test_a_move_may_evict_a_prewarm_that_scores_below_the_big_models_best_replica():
    """Both idle GPUs of server 1 hold `a`'s prewarm (score 1, below `big`'s 100): c1 moves onto one of them and
    the start evicts it (``defragment_over_prewarms``, the default). Without it nothing moved: paper-code at x0.62,
    seed 0, a 7B prewarm on the one idle GPU kept the 70B from a whole server for its first burst."""
    d, st = _cluster(others_prewarmed=(6, 7))
    d.tick(100.0)
    (new,) = [i for i in st.instances.values() if i.model == "c" and i.instance_id != "c1"]
    assert new.gpus in ((6,), (7,)) and f"pa{new.gpus[0]}" not in st.prewarms and "pbig" in st.prewarms


def test_a_prewarm_scoring_above_the_big_model_still_blocks_but_its_own_replica_on_busy_gpus_does_not():
    """`a`'s prewarms outrank `big`'s replica: c1 may not go there. Server 1 is cleared instead, `a` and `b`
    moving onto server 2's idle GPUs under `big`'s own replica, which could serve only once c1 left too. With the
    option off, that replica blocked them as well, and nothing moved."""
    d, st = _cluster(others_prewarmed=(6, 7), others_score=1000.0)
    d.tick(100.0)
    moved = sorted((i.model, i.gpus) for i in st.instances.values() if i.instance_id not in ("a1", "b1", "big1", "c1"))
    assert [m for m, _ in moved] == ["a", "b"] and all(g[0] in (9, 10, 11) for _, g in moved)
    assert "pa6" in st.prewarms and "pa7" in st.prewarms and "pbig" not in st.prewarms  # the price of the move


def test_every_move_of_a_relocation_uses_the_threshold_taken_before_the_first_start():
    """Server 1: `a` on 4, `b` on 5, `e` prewarmed on 6 and 7 (score 1000). Server 2: `c` on 8, `d` on 9, `big`
    prewarmed on 8-11 (score 100), `e` on 11 (score 1). Server 1 is cleared: `a` onto 10, `b` onto 11. `a`'s start
    evicts `big`'s replica; before, `b`'s move then took `big`'s best score as 0, counted `e`'s prewarm on 11 and
    found no GPU: `a` had moved for nothing and `big` had lost its replica (found in review)."""
    models = [ModelInfo("big", 40 * GiB, 4, 1 << 19, prefill_s=0.1)] + [
        ModelInfo(m, 10 * GiB, 1, 1 << 19) for m in "abcde"]
    st = ClusterState.uniform(3, models, gpus_per_server=4, gpu_bytes=40 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6))
    d = instant_driver(pol, st, start_ready=False)
    d.apply(A.Prewarm("pbig", "big", (8, 9, 10, 11), 100.0), 0.0)
    for pid, g, score in (("pe6", 6, 1000.0), ("pe7", 7, 1000.0), ("pe11", 11, 1.0)):
        d.apply(A.Prewarm(pid, "e", (g,), score), 0.0)
    for iid, m, gpus in (("big1", "big", (0, 1, 2, 3)), ("a1", "a", (4,)), ("b1", "b", (5,)), ("c1", "c", (8,)),
                         ("d1", "d", (9,))):
        d.apply(A.StartInstance(iid, m, gpus), 0.0)
        d.instance_ready(iid, 0.0)
        d.submit(m, f"{iid}-r", 1.0)
    pol._plan_window = 0
    d.tick(100.0)
    moved = sorted((i.model, i.gpus) for i in st.instances.values() if "/" in i.instance_id)
    assert moved == [("a", (10,)), ("b", (11,))]


def test_a_move_whose_old_instance_reclaim_stopped_this_tick_is_not_stopped_again():
    """Found in review: with a move in flight (`new` replacing `old`) and `new` ready, reclaim stopped `old` for a
    model waiting with no instance, then the move stopped it again: its GPU counted idle twice and got a prewarm of
    `old`'s model under the waiting model's new instance."""
    models = [ModelInfo("x", 10 * GiB, 1, 1 << 19), ModelInfo("y", 10 * GiB, 1, 1 << 19)]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=40 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6, coserve_tpot_s=0))
    d = instant_driver(pol, st, start_ready=False)
    d.apply(A.StartInstance("old", "x", (0,)), 0.0)
    d.instance_ready("old", 0.0)
    d.apply(A.StartInstance("new", "x", (1,)), 0.0)
    pol._plan_window = 0
    pol._moving["new"] = "old"
    d.tick(50.0)
    st.queues["y"].append("r1")  # y waits with no instance and no free GPU
    st.instances["new"].ready_s = 100.0
    acts = pol.tick(st, 100.0)
    assert sum(type(a) is A.StopInstance and a.instance_id == "old" for a in acts) == 1
    for a in acts:
        d.apply(a, 100.0)
    on_gpu0 = [i.model for i in st.instances.values() if 0 in i.gpus and not i.draining]
    assert not [p for p in st.prewarms.values() if 0 in p.gpus and p.model == "x"] or "y" not in on_gpu0
    assert all(b >= 0 for b in st.free_bytes_on())
