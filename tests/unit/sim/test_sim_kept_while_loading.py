"""Weights kept from an instance stopped while its cold load was still under way are only there once that load
ends, in the simulator as live: the live executor's prewarm of them (``LiveExecutor.keep_prewarm``) takes over
the load, and a start from it waits for the rest of the copy and counts as a start from a loading prewarm, not a
hit. The simulator took them as loaded at once (ready an activation later, a hit) though the copy had not ended.
A scripted policy on one GPU: a cold start at the first tick, stopped at the second (its weights kept as a
prewarm, as the policy keeps a stopped instance's) and a start from that prewarm at the third, or stopped and
started again on the same GPU at the second (the driver starts it from the kept weights)."""

import numpy as np

from warmserve.policy import actions as A
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel, GpuType
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

from scripted_policy import ScriptedPolicy


class _Scripted(ScriptedPolicy):
    def __init__(self, kept_start: bool):
        self.ticks = 0
        self.kept_start = kept_start

    def tick(self, state, now_s):
        self.ticks += 1
        if self.ticks == 1:
            return [A.StartInstance("i-1", "a", (0,))]
        if self.ticks == 2:
            assert not state.instances["i-1"].ready  # still loading
            if self.kept_start:  # a cold start on the same GPU: the driver makes it one from the kept weights
                return [A.StopInstance("i-1"), A.StartInstance("i-2", "a", (0,))]
            return [A.StopInstance("i-1"), A.Prewarm("p-1", "a", (0,), 1.0, kept_from="i-1")]
        if self.ticks == 3 and not self.kept_start:
            return [A.StartInstance("i-2", "a", (0,), prewarm_id="p-1")]
        return []

    def route(self, state, model, now_s):
        inst = state.instances.get("i-2")
        return A.Route(model, "i-2") if inst is not None and inst.ready else None


def _run(kept_start: bool):
    tr = Trace(["a"], np.asarray([20.0]), np.zeros(1, np.int32), np.asarray([100]), np.asarray([10]))
    w = Workload("hand", tr, Trace.empty(["a"]), 21.0)
    # ticks 0.1 s apart: the second and third come while the first start's copy (0.42 s) is under way
    config = SimConfig(n_servers=1, gpus_per_server=1, drain_s=600.0, warmup_s=0.0, shared_search=False,
                       tick_s=0.1)
    sim = Simulator(w, [ServedModel("a", "llama2-7b")], "warmserve", config=config,
                    cost=CostModel(gpu=GpuType(memory_bytes=40e9)))
    sim.policy = sim.driver.policy = _Scripted(kept_start)
    if kept_start:
        sim.driver._hits_on_kept = True
    load_s = sim.cost.load_s(sim.mcost[0])
    assert load_s > 0.3
    return sim, sim.run().summary, load_s


def _check(kept_start):
    sim, s, load_s = _run(kept_start)
    t0 = sim.clock0 - sim.warmup_s  # the first tick: i-1's copy starts
    c = sim.counts["measured"]
    assert c["total"] == 2 and c["hit"] == 0 and c["loading"] == 1, c
    # i-2 was ready no earlier than i-1's copy ended (started at t0) and its activation
    assert sim.first[0] >= t0 + load_s + sim.cost.activation_s - 1e-9
    assert s["completed"] == 1


def test_a_prewarm_kept_from_a_start_still_loading_waits_for_its_copy():
    _check(kept_start=False)


def test_a_cold_start_on_weights_kept_while_loading_waits_for_their_copy():
    _check(kept_start=True)
