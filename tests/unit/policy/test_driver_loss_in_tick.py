"""The policy driver when a GPU is lost in the middle of applying a tick's actions (a send that fails runs the loss
handling at once), and when the policy's route raises under a request just submitted."""

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.driver import PolicyDriver
from warmserve.policy.instant import InstantExecutor
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


class _LosesOnStop(InstantExecutor):
    """The instant executor, but a stop loses its instance's GPUs, as the live executor's does when its Deactivate
    cannot be sent (the worker died a moment before and no heartbeat has noticed yet): ``lose_gpus`` runs inside
    the driver's ``apply`` of the StopInstance."""

    def stop_instance(self, inst, now_s):
        super().stop_instance(inst, now_s)
        self.driver.lose_gpus(inst.gpus, now_s)


def _setup(executor, n_gpus=4):
    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19), ModelInfo("b", 10 * GiB, 1, 1 << 19)]
    st = ClusterState.uniform(1, models, gpus_per_server=n_gpus, gpu_bytes=40 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6))
    return executor.attach(PolicyDriver(pol, st, executor)), st


def test_a_scale_in_whose_stop_loses_the_gpu_keeps_nothing_on_it_and_the_policy_goes_on():
    """Found in review: the scale-in's Prewarm(kept_from) that follows its StopInstance was placed on the GPU the
    stop had just lost; every later tick (and route) then raised KeyError, for good."""
    d, st = _setup(_LosesOnStop())
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    # What the policy's scale-in of an idle instance emits (Policy._stop): the stop, then its weights kept.
    for act in (A.StopInstance("i1"), A.Prewarm("p1", "a", (0,), 1.0, kept_from="i1")):
        d.apply(act, 1.0)
    assert st.gpus[0].gone and st.prewarms == {} and "i1" not in d.kept
    assert ("load_prewarm", "p1") not in d.executor.log and ("keep_prewarm", "p1") not in d.executor.log
    d.tick(2.0)  # raised KeyError: no board has a gone GPU
    d.submit("b", "r1", 3.0)
    (inst,) = [i for i in st.instances.values() if i.model == "b"]
    assert 0 not in inst.gpus and d.executor.running[inst.instance_id] == ["r1"]


def test_a_start_on_a_gpu_lost_earlier_in_the_tick_creates_nothing_and_its_requests_wait():
    d, st = _setup(_LosesOnStop())
    d.apply(A.StartInstance("i1", "a", (0,)), 0.0)
    d.apply(A.Prewarm("p2", "b", (2,), 1.0), 0.0)
    d.executor.start_ready = False
    d.apply(A.StopInstance("i1"), 1.0)
    st.queues["b"].append("r1")  # waiting while the tick's actions are applied
    d.apply(A.StartInstance("i2", "b", (0,), evict=("p2",)), 1.0)
    assert "i2" not in st.instances and ("start_instance", "i2") not in d.executor.log
    assert "p2" in st.prewarms, "a start that is not made evicts nothing"
    assert list(st.queues["b"]) == ["r1"] and not d._failures  # it waits; a loss is not the model's failure
    d.tick(2.0)
    (inst,) = [i for i in st.instances.values() if i.model == "b"]
    assert not any(st.gpus[g].gone for g in inst.gpus)


class _LosesOnEvict(InstantExecutor):
    """A prewarm's eviction (or the drop of kept weights) loses its GPUs: the live executor's Evict goes to the
    very worker a start is placed on, and a send that fails runs the loss handling inside the start's apply."""

    def drop_prewarm(self, prewarm, evicted, now_s):
        super().drop_prewarm(prewarm, evicted, now_s)
        self.driver.lose_gpus(prewarm.gpus, now_s)

    def drop_kept(self, kept, now_s):
        super().drop_kept(kept, now_s)
        self.driver.lose_gpus(kept.gpus, now_s)


@pytest.mark.parametrize("what", ["a prewarm it evicts", "kept weights it drops"])
def test_a_start_whose_eviction_loses_the_gpu_creates_nothing_there(what):
    """Found in review: the start checked its GPUs before its evictions, and the instance was made on the GPU they
    had just lost; requests went to it, and every later tick raised KeyError (no board has a gone GPU)."""
    d, st = _setup(_LosesOnEvict())
    if what == "a prewarm it evicts":
        d.apply(A.Prewarm("pa", "a", (0,), 1.0), 0.0)
        d.apply(A.StartInstance("ib", "b", (0,), evict=("pa",)), 1.0)
    else:
        d.apply(A.StartInstance("ia", "a", (0,)), 0.0)
        d.apply(A.StopInstance("ia"), 0.5)  # its weights kept on GPU 0 until the tick's end
        d.apply(A.StartInstance("ib", "b", (0,)), 1.0)
    assert st.gpus[0].gone and "ib" not in st.instances and ("start_instance", "ib") not in d.executor.log
    d.submit("b", "r1", 2.0)
    d.tick(3.0)
    (inst,) = [i for i in st.instances.values() if i.model == "b"]
    assert 0 not in inst.gpus and d.executor.running[inst.instance_id] == ["r1"]


class _Scripted:
    """The real policy, but its next tick's actions are the given list."""

    def __init__(self, policy, acts):
        self._policy, self.acts = policy, acts

    def tick(self, state, now_s):
        acts, self.acts = self.acts, []
        return acts

    def __getattr__(self, name):
        return getattr(self._policy, name)


def test_a_loss_during_a_ticks_actions_routes_the_queues_only_after_them():
    """A tick's StopInstance loses its GPU (1); the next action starts b on the idle GPU 0. Found in review: the
    loss routed the queues at once, so route() started b on GPU 0 before the tick's own start, which then went
    there too: two dedicated instances on one GPU, each sized to all of its KV."""
    d, st = _setup(_LosesOnStop(), n_gpus=2)
    d.apply(A.StartInstance("a/i1", "a", (1,)), 0.0)
    st.queues["b"].extend(["r1", "r2"])  # b waits for GPUs (as when a tick frees them for it)
    d.policy = _Scripted(d.policy, [A.StopInstance("a/i1"), A.StartInstance("b/i2", "b", (0,))])
    d.tick(1.0)
    assert st.gpus[1].gone
    assert [i.instance_id for i in st.instances.values()] == ["b/i2"]
    assert d.executor.running["b/i2"] == ["r1", "r2"]


def test_gpus_reserved_for_a_model_are_released_when_one_of_them_is_lost():
    """Time-sharing stopped a's instances on GPUs 0 and 1 for c (tp 2), and GPU 1 is then lost: c can start
    nowhere. Found in review: the reservation stood until c's queue emptied, and a waited beside the idle GPU 0."""
    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19), ModelInfo("c", 20 * GiB, 2, 1 << 19)]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=40 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(
        instance_capacity=2, window_s=60.0, replan_s=1e9, min_lifetime_s=1.0, preempt_after_s=2.0))
    ex = InstantExecutor()
    d = ex.attach(PolicyDriver(pol, st, ex))
    t = 0.0
    for i in range(8):  # a busy on both GPUs
        d.submit("a", f"a{i}", t)
    for _ in range(5):
        t += 1.0
        d.tick(t)
    assert sorted(g for i in st.instances.values() for g in i.gpus) == [0, 1]
    for iid in list(ex.running):  # a's burst ends, one request each stays
        for r in ex.running[iid][1:]:
            d.request_finished("a", iid, t, request=r)
        ex.running[iid] = ex.running[iid][:1]
    for i in range(4):
        d.submit("c", f"c{i}", t)  # c waits with no instance
    for _ in range(30):
        t += 1.0
        d.tick(t)
        if pol._reserved:
            break
    assert pol._reserved == {"c": (0, 1)}
    d.lose_gpus([1], t)
    for iid in list(ex.running):  # a's requests there end with it; the one on GPU 0 finishes
        for r in ex.running.pop(iid):
            d.request_finished("a", iid, t, request=r)
    d.submit("a", "late", t)
    for _ in range(5):
        t += 1.0
        d.tick(t)
    assert pol._reserved == {} and st.queued("a") == 0
    (inst,) = [i for i in st.instances.values() if i.model == "a"]
    assert inst.gpus == (0,) and "late" in ex.running[inst.instance_id]


class _RouteRaises:
    """The real policy but for route, which raises (any policy bug there)."""

    def __init__(self, policy):
        self._policy = policy

    def route(self, state, model, now_s):
        raise KeyError(0)

    def __getattr__(self, name):
        return getattr(self._policy, name)


def test_a_request_whose_route_raises_is_not_left_queued():
    """Found in review: submit raised the policy's KeyError to the caller, who never got the request, and the
    request stayed in the queue (counted as waiting, and as demand, until it timed out)."""
    d, st = _setup(InstantExecutor())
    d.policy = _RouteRaises(d.policy)
    with pytest.raises(KeyError):
        d.submit("a", "r1", 1.0, prompt_tokens=7)
    assert st.queued("a") == 0 and st.queued_prompt_tokens["a"] == 0 and not d._prefill

