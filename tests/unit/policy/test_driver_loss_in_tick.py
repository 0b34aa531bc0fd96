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


def _setup(executor):
    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19), ModelInfo("b", 10 * GiB, 1, 1 << 19)]
    st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=40 * GiB)
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

