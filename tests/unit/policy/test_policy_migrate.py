"""Moving requests off a draining instance (``arbitration.migrations``, ``actions.Migrate``): while a model wants
GPUs that are not free, a draining instance whose few requests its model's other instances can take hands them
over, and its GPUs go to the wanting model in the same tick. Through the real driver."""

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _cluster(load_on_sibling=0, **cfg):
    """3 GPUs: model a on GPUs 0 and 1 (the instance holding a's one request drains), b on GPU 2 with 60
    requests: b wants more instances and no GPU is free."""
    models = [ModelInfo(n, 10 * GiB, 1, 1 << 19, prefill_s=0.035, decode_s_per_token=0.015) for n in "ab"]
    st = ClusterState.uniform(1, models, gpus_per_server=3, gpu_bytes=40 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6, **cfg))
    d = instant_driver(pol, st)
    for iid, m, g in (("a1", "a", 0), ("a2", "a", 1), ("b1", "b", 2)):
        d.apply(A.StartInstance(iid, m, (g,)), 0.0)
    d.submit("a", "x", 0.0)
    (draining,) = [i for i in st.instances.values() if i.model == "a" and i.in_flight]
    sibling = next(i for i in st.instances.values() if i.model == "a" and i is not draining)
    sibling.in_flight += load_on_sibling  # requests the test does not follow
    d.apply(A.StopInstance(draining.instance_id), 0.0)
    for k in range(60):
        d.submit("b", f"b{k}", 0.0)
    t = 0.0
    while t < 6.0 and ("migrate_requests", draining.instance_id) not in d.executor.log:
        t += 0.5
        d.tick(t)
    return d, st, draining, sibling


def test_a_draining_instance_hands_its_request_over_and_its_gpu_goes_to_the_wanting_model():
    d, st, draining, sibling = _cluster(migrate_max_in_flight=4)
    assert ("migrate_requests", draining.instance_id) in d.executor.log
    assert draining.instance_id not in st.instances
    assert "x" in d.executor.running[sibling.instance_id]  # resumed on a's other instance
    b = [i for i in st.instances.values() if i.model == "b"]
    assert len(b) >= 2 and any(i.gpus == draining.gpus for i in b)  # the freed GPU serves b at once
    # its weights were kept where they were (then evicted for b's start), never loaded again
    log = d.executor.log
    k = log.index(("migrate_requests", draining.instance_id))
    assert log[k + 1] == ("stop_instance", draining.instance_id) and log[k + 2][0] == "keep_prewarm"
    assert not any(kind == "load_prewarm" for kind, _ in log[k:])


def test_no_migration_when_off_or_when_the_other_instances_have_no_room():
    d, st, draining, _ = _cluster(migrate_max_in_flight=0)
    assert draining.instance_id in st.instances and draining.draining  # it drains as before
    assert not any(k == "migrate_requests" for k, _ in d.executor.log)
    B = PolicyConfig().instance_capacity
    d, st, draining, _ = _cluster(load_on_sibling=B, migrate_max_in_flight=4)
    assert draining.instance_id in st.instances
    assert not any(k == "migrate_requests" for k, _ in d.executor.log)


def test_migrate_max_in_flight_must_not_be_negative():
    with pytest.raises(InvalidArgumentError, match="migrate_max_in_flight"):
        PolicyConfig(migrate_max_in_flight=-1)


def test_no_migration_when_the_freed_gpu_gives_the_wanting_model_no_group():
    """4 GPUs: a on GPUs 0 and 1 (the one on GPU 0 drains with a request), b (tp 2) on GPUs 2-3 wants a second
    group. Freeing GPU 0 completes no aligned pair (GPU 1 serves a), so the request stays where it runs."""
    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19, prefill_s=0.035, decode_s_per_token=0.015),
              ModelInfo("b", 20 * GiB, 2, 1 << 19, prefill_s=0.07, decode_s_per_token=0.02)]
    st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=40 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6))
    d = instant_driver(pol, st)
    for iid, m, g in (("a1", "a", (0,)), ("a2", "a", (1,)), ("b1", "b", (2, 3))):
        d.apply(A.StartInstance(iid, m, g), 0.0)
    d.submit("a", "x", 0.0)
    (busy,) = [i for i in st.instances.values() if i.model == "a" and i.in_flight]
    d.apply(A.StopInstance(busy.instance_id), 0.0)
    for k in range(60):
        d.submit("b", f"b{k}", 0.0)
    for t in range(1, 13):
        d.tick(t * 0.5)
    assert busy.instance_id in st.instances and not any(k == "migrate_requests" for k, _ in d.executor.log)


def test_only_the_instances_that_complete_a_group_move_and_no_more_groups_than_wanted():
    """Two servers of 4 GPUs, `b` (tp 2) wants GPUs. a1 drains with 1 request on GPU 0 (GPU 1 serves a2); a3 drains
    with 2 on GPU 4 beside idle GPU 5; a4 drains with 2 on GPU 6 beside idle GPU 7. Only a3 moves for one group
    wanted (a1's GPU completes no pair); both a3 and a4 for two."""
    from warmserve.policy.arbitration import migration_plan
    from warmserve.policy.placement import Board
    from warmserve.policy.state import InstanceState

    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19), ModelInfo("b", 20 * GiB, 2, 1 << 19)]
    for need, want in ((1, ["a3"]), (2, ["a3", "a4"])):
        st = ClusterState.uniform(2, models, gpus_per_server=4, gpu_bytes=40 * GiB)
        for iid, g, n, drains in (("a1", 0, 1, True), ("a2", 1, 0, False), ("a3", 4, 2, True), ("a4", 6, 2, True),
                                  ("b1", 2, 8, False), ("b1x", 3, 0, False)):
            st.instances[iid] = InstanceState(iid, "a" if iid[0] == "a" else "b", (g,), 0.0, 0.0, n, drains)
        moved = migration_plan(st, Board(st), set(), 32, 8, {2}, need)
        assert [i.instance_id for i in moved] == want


def _instances(st, rows):
    from warmserve.policy.state import InstanceState

    for iid, model, gpus, in_flight, drains in rows:
        st.instances[iid] = InstanceState(iid, model, gpus, 0.0, 0.0, in_flight, drains)


def test_a_draining_instance_that_shares_its_gpu_with_another_is_not_moved():
    """a1 drains with one request on GPU 0, which co-serves b1: moving a1's request frees no GPU, so it stays;
    alone on its GPU it moves."""
    from warmserve.policy.arbitration import migrations

    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19), ModelInfo("b", 10 * GiB, 1, 1 << 19)]
    for cohost, want in ((True, []), (False, ["a1"])):
        st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=40 * GiB)
        _instances(st, [("a1", "a", (0,), 1, True), ("a2", "a", (1,), 0, False),
                        ("b1", "b", (0,) if cohost else (2,), 0, False)])
        assert [i.instance_id for i in migrations(st, set(), 32, 4)] == want


def test_a_sibling_over_capacity_takes_nothing_and_costs_the_others_no_room():
    """a2 runs one request over the capacity (32), a3 has room for one more: a1's one request goes to a3, as if
    a2 were full, not held back because a2 ran over."""
    from warmserve.policy.arbitration import migrations

    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19)]
    st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=40 * GiB)
    _instances(st, [("a1", "a", (0,), 1, True), ("a2", "a", (1,), 33, False), ("a3", "a", (2,), 31, False)])
    assert [i.instance_id for i in migrations(st, set(), 32, 4)] == ["a1"]
    st.instances["a3"].in_flight = 32  # now no sibling has room
    assert migrations(st, set(), 32, 4) == []
