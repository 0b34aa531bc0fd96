"""The policy driver with the instant executor: queues, the route loop, kept weights, start failures, and GPUs
that join or are lost (their ids never move)."""

import pytest

from warmserve.errors import InvalidArgumentError, WarmServeError, WorkerLostError
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.driver import START_ATTEMPTS
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _setup(n_gpus=4, name="warmserve", **cfg):
    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19), ModelInfo("b", 10 * GiB, 1, 1 << 19)]
    st = ClusterState.uniform(1, models, gpus_per_server=n_gpus, gpu_bytes=40 * GiB)
    # no plan after the first tick: only autoscaling and kept weights add things
    pol = make_policy(name, models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6, **cfg))
    return instant_driver(pol, st), st


def test_the_queue_is_the_count_and_routes_oldest_first():
    d, st = _setup()
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    d.apply(A.StopInstance("i1"), 0.0)  # nothing runs: requests wait
    d.executor.start_ready = False
    d.submit("a", "r1", 1.0)
    assert st.queued("a") == 1 and list(st.queues["a"]) == ["r1"]  # a start is in flight: it waits
    started = [i for i in st.instances.values() if i.model == "a"]
    assert len(started) == 1 and not started[0].ready
    d.submit("a", "r2", 1.0)
    assert list(st.queues["a"]) == ["r1", "r2"]
    d.instance_ready(started[0].instance_id, 1.5)  # routes the whole queue, oldest first
    assert st.queued("a") == 0 and d.executor.running[started[0].instance_id] == ["r1", "r2"]
    assert started[0].in_flight == 2
    assert d.withdraw("a", "r3", 1.0) is False


def test_unknown_action_and_route_from_tick():
    d, st = _setup()
    with pytest.raises(InvalidArgumentError, match="not a policy action"):
        d.apply("prewarm everything", 0.0)
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    d.apply(A.Route("a", "i1"), 0.0)  # nothing waits: nothing is sent
    assert st.instances["i1"].in_flight == 0
    st.queues["a"].extend(["old", "new"])
    d.apply(A.Route("a", "i1"), 0.0)  # a Route in tick's list sends the model's oldest waiting request
    assert d.executor.running["i1"] == ["old"] and list(st.queues["a"]) == ["new"]
    with pytest.raises(InvalidArgumentError, match="unknown instance"):
        d.apply(A.Route("a", "nope"), 0.0)


def test_kept_weights_are_taken_by_their_prewarm_or_dropped_at_the_end_of_the_tick():
    d, st = _setup()
    log = d.executor.log
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    d.apply(A.StopInstance("i1"), 0.0)
    assert "i1" in d.kept and ("stop_instance", "i1") in log
    d.apply(A.Prewarm("p1", "a", (0,), 1.0, kept_from="i1"), 0.0)
    assert st.prewarms["p1"].loaded and ("keep_prewarm", "p1") in log and ("load_prewarm", "p1") not in log
    assert not d.kept
    # a Prewarm naming weights that are gone loads them again
    d.apply(A.Prewarm("p2", "b", (1,), 1.0, kept_from="i-unknown"), 0.0)
    assert ("load_prewarm", "p2") in log
    # something else on the GPUs drops kept weights first; a tick drops the rest
    d.apply(A.StartInstance("i2", "a", (2,)), 0.0)
    d.apply(A.StopInstance("i2"), 0.0)
    d.apply(A.StartInstance("i3", "a", (3,)), 0.0)
    d.apply(A.StopInstance("i3"), 0.0)
    d.apply(A.StartInstance("i4", "b", (2,)), 0.0)
    assert log.index(("drop_kept", "i2")) < log.index(("start_instance", "i4")) and list(d.kept) == ["i3"]
    d.tick(1.0)
    assert not d.kept and ("drop_kept", "i3") in log


def test_an_idle_scale_in_keeps_weights_through_the_driver_with_no_copy():
    d, st = _setup()
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    d.apply(A.StartInstance("i2", "a", (1,)), 0.0)
    d.tick(100.0)  # idle: scaled in to one (the last stays: no other model wants GPUs), weights kept as a prewarm
    assert list(st.instances) == ["i2"]
    assert [(p.model, p.gpus, p.loaded) for p in st.prewarms.values()] == [("a", (0,), True)]
    kinds = [k for k, _ in d.executor.log]
    assert kinds.count("keep_prewarm") == 1 and "load_prewarm" not in kinds and "drop_kept" not in kinds


def test_failed_starts_back_off_then_fail_the_waiting_requests():
    d, st = _setup()
    d.executor.start_ready = False
    d.submit("a", "r1", 0.0)
    (iid,) = st.instances
    d.instance_failed(iid, 0.0, WarmServeError("disk on fire"))
    d.route("a", 0.1)
    assert not st.instances  # backing off: no new start yet
    d.tick(0.1)
    assert not st.instances  # nor from a tick's StartInstance
    d.apply(A.Prewarm("pb", "b", (1,), 1.0), 0.1)
    d.apply(A.StartInstance("i-refused", "a", (1,), evict=("pb",)), 0.1)
    assert "i-refused" not in st.instances and "pb" in st.prewarms  # a refused start evicts nothing
    d.apply(A.Evict("pb", "test"), 0.1)
    for n in range(2, START_ATTEMPTS + 1):
        d.route("a", 10.0 * n)
        (iid,) = st.instances
        d.instance_failed(iid, 10.0 * n, WarmServeError("disk on fire"))
    assert st.queued("a") == 0 and d.executor.log[-1] == ("fail", "r1")
    # a start lost with its worker is not the model's failure
    d.submit("b", "r2", 100.0)
    (iid,) = st.instances
    d.instance_failed(iid, 100.0, WorkerLostError("gone"))
    assert not d._failures.get("b") and st.queued("b") == 1


def test_gpu_ids_survive_a_loss_and_a_stopped_instance_on_a_lost_gpu_keeps_nothing_elsewhere():
    """A draining instance (stopped, requests still in flight) is lost with its GPU. GPU ids of the others do not
    move, the next tick keeps no weights for it anywhere (before, the renumbered GPU id pointed at another
    worker), and a GPU that joins gets a new id."""
    d, st = _setup()
    d.apply(A.StartInstance("i1", "a", (1,)), 0.0)
    d.apply(A.StartInstance("i2", "a", (2,)), 0.0)
    d.submit("a", "r1", 1.0)
    d.submit("a", "r2", 1.0)
    assert st.instances["i1"].in_flight == 1 == st.instances["i2"].in_flight
    d.tick(100.0)  # load 2 on two instances: stop one, which drains
    assert st.instances["i1"].draining and d.policy._retain
    d.lose_gpus([1], 101.0, requeue=[("a", "r1")])
    assert [g.gpu_id for g in st.gpus] == [0, 1, 2, 3] and [g.gone for g in st.gpus] == [False, True, False, False]
    assert st.servers[0].gpu_ids == (0, 2, 3) and "i1" not in st.instances
    assert d.executor.running["i2"] == ["r2", "r1"]  # the lost request started over on i2
    d.tick(102.0)
    assert not any(1 in p.gpus for p in st.prewarms.values())
    assert not any(1 in i.gpus for i in st.instances.values())
    assert not [x for x in d.executor.log if x[0] == "keep_prewarm"]
    assert d.add_gpus(0, [40 * GiB]) == [4] and st.servers[0].gpu_ids == (0, 2, 3, 4)
    for k in range(3):  # fill the live GPUs: placement never uses the lost one
        for _ in range(40):
            d.submit("b", f"b{k}", 103.0 + k)
        d.tick(103.0 + k)
    assert not any(1 in i.gpus for i in st.instances.values())


def test_migrate_stops_the_instance_at_once_and_its_requests_start_over_first_in_the_queue():
    d, st = _setup()
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    d.apply(A.StartInstance("i2", "a", (1,)), 0.0)
    for r in ("r1", "r2", "r3"):
        d.submit("a", r, 1.0, prompt_tokens=100)
    assert d.executor.running == {"i1": ["r1", "r3"], "i2": ["r2"]}  # least loaded first
    st.instances["i2"].draining = True  # nowhere to go at once: the moved requests wait, oldest first
    d.submit("a", "r4", 1.5)
    d.apply(A.Migrate("i1"), 2.0)
    assert "i1" not in st.instances and "i1" in d.kept  # stopped now, its weights kept
    assert ("migrate_requests", "i1") in d.executor.log and ("stop_instance", "i1") in d.executor.log
    assert list(st.queues["a"]) == ["r1", "r3", "r4"]
    # r1 and r3 had no token out: their prompts wait again as prefill load; r2's stays on i2
    assert st.queued_prompt_tokens["a"] == 200 and st.instances["i2"].prefill_tokens_pending == 100
    st.instances["i2"].draining = False
    d.route("a", 3.0)
    assert st.queued("a") == 0 and d.executor.running["i2"] == ["r2", "r1", "r3", "r4"]
    assert st.instances["i2"].in_flight == 4 and st.instances["i2"].prefill_tokens_pending == 300


def test_requests_resumed_after_a_loss_count_the_tokens_they_prefill_again():
    d, st = _setup()
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    d.submit("a", "r1", 1.0, prompt_tokens=100)
    d.prefill_done("r1", 1.1)
    d.executor.start_ready = False  # the instance started for it is not ready yet: it waits in the queue
    d.lose_gpus([0], 2.0, requeue=[("a", "r1", 130)])  # 100 prompt tokens + 30 streamed
    assert list(st.queues["a"]) == ["r1"] and st.queued_prompt_tokens["a"] == 130


@pytest.mark.parametrize("n_gpus", [2, 1])
def test_a_start_that_failed_on_a_gpu_goes_to_another_where_one_fits(n_gpus):
    """Found in review (Ray): a node without the weights took every start of the model, each failing, while another
    node's worker sat idle. With one GPU the start is tried there again; an instance ready clears the record."""
    d, st = _setup(n_gpus=n_gpus)
    d.executor.start_ready = False
    d.submit("a", "r1", 0.0)
    (first,) = st.instances.values()
    failed = first.gpus
    d.instance_failed(first.instance_id, 0.0, WarmServeError("holds no model.safetensors"))
    assert st.failed_starts == {"a": frozenset(failed)}
    d.route("a", 60.0)  # after the back-off
    (second,) = st.instances.values()
    assert (second.gpus != failed) == (n_gpus > 1), (second.gpus, failed)
    d.instance_ready(second.instance_id, 61.0)
    assert st.failed_starts == {} and st.queued("a") == 0
