"""A request that was on as many lost workers as the live controller allows
(``ControllerConfig.max_worker_losses_per_request``, 2) ends there, in the simulator as live: the live controller
fails it (``WorkerLostError``, ``Controller._on_lost``) so that a request that kills its workers does not take them
all down in turn, where the simulator started it over after every loss and answered it. A scripted policy on
three GPUs: an instance of the model on the first GPU not lost, started again after each loss."""

import math

import numpy as np

from warmserve.config import ControllerConfig
from warmserve.policy import actions as A
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

from scripted_policy import ScriptedPolicy


class _OneInstance(ScriptedPolicy):
    def __init__(self):
        self.n = 0

    def _start(self, state):
        if state.instances:
            return None
        gpu = next(g.gpu_id for g in state.gpus if not g.gone)
        self.n += 1
        return A.StartInstance(f"i-{self.n}", "a", (gpu,))

    def tick(self, state, now_s):
        act = self._start(state)
        return [act] if act is not None else []

    def route(self, state, model, now_s):
        ready = [i for i in state.instances.values() if i.ready]
        return A.Route(model, ready[0].instance_id) if ready else self._start(state)


def _run(losses):
    # request 0 decodes 3000 tokens (about a minute) through both losses; request 1 comes after them
    tr = Trace(["a"], np.asarray([1.0, 20.0]), np.zeros(2, np.int32), np.asarray([100, 100]),
               np.asarray([3000, 10]))
    w = Workload("hand", tr, Trace.empty(["a"]), 21.0)
    config = SimConfig(n_servers=1, gpus_per_server=3, drain_s=600.0, warmup_s=0.0, shared_search=False)
    sim = Simulator(w, [ServedModel("a", "llama2-7b")], "dedicated", config=config, gpu_losses=losses)
    sim.policy = sim.driver.policy = _OneInstance()
    return sim, sim.run().summary


def test_a_request_on_two_lost_workers_ends_as_the_live_controller_ends_it():
    assert ControllerConfig.max_worker_losses_per_request == 2
    sim, s = _run([(5.0, (0,)), (10.0, (1,))])
    assert not math.isnan(sim.first[0]) and math.isnan(sim.finish[0])  # failed after its first tokens
    assert s["completed"] == 1 and not math.isnan(sim.finish[1])
    assert all(not q for q in sim.state.queues.values())
    assert all(i.in_flight == 0 and i.prefill_tokens_pending == 0 for i in sim.state.instances.values())
    assert sim.state.queued_prompt_tokens == {"a": 0}


def test_a_request_on_one_lost_worker_starts_over():
    sim, s = _run([(5.0, (0,))])
    assert s["completed"] == 2 and not math.isnan(sim.finish[0])


class _StopsBeforeLoss(_OneInstance):
    """Stops the instance serving request 0 a second before the second loss: it drains with the request in flight."""

    def tick(self, state, now_s):
        inst = state.instances.get("i-2")
        if inst is not None and inst.ready and not inst.draining and now_s >= self.clock0 + 9.0:
            return [A.StopInstance("i-2")]
        return super().tick(state, now_s)


def test_a_draining_instance_whose_last_request_ends_with_the_loss_leaves_cleanly():
    tr = Trace(["a"], np.asarray([1.0, 20.0]), np.zeros(2, np.int32), np.asarray([100, 100]),
               np.asarray([3000, 10]))
    w = Workload("hand", tr, Trace.empty(["a"]), 21.0)
    config = SimConfig(n_servers=1, gpus_per_server=3, drain_s=600.0, warmup_s=0.0, shared_search=False)
    sim = Simulator(w, [ServedModel("a", "llama2-7b")], "dedicated", config=config,
                    gpu_losses=[(5.0, (0,)), (10.0, (1,))])
    policy = _StopsBeforeLoss()
    policy.clock0 = sim.clock0
    sim.policy = sim.driver.policy = policy
    s = sim.run().summary
    assert math.isnan(sim.finish[0]) and s["completed"] == 1
    assert sim.gpu_used[1] == 0 and "i-2" not in sim.state.instances
