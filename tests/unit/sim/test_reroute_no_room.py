"""A request a co-served instance refuses for want of room goes on to an instance of its model serving alone, in
the simulator as live (``PolicyDriver.reroute``; live: the controller on a ``NoRoomHereError``). A scripted policy
holds the layout still: model a co-served with b on GPU 0, and a alone on GPU 1; every request of a is routed to
the co-served instance first."""

import math

import numpy as np

from warmserve.geometry import blocks_for_tokens
from warmserve.policy import actions as A
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel, GpuType
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

from scripted_policy import ScriptedPolicy

#: a 40 GB GPU: its pool (36 GB) holds a 7B's 13.5 GB shard and 167 KV blocks of 128 MiB; beside two shards at
#: most 67 are ever free
GPU = GpuType(memory_bytes=40e9)


class _Scripted(ScriptedPolicy):
    """The layout above at the first tick, then nothing; routes to the co-served instance of a while it is ready."""

    def __init__(self):
        self.ticks = 0

    def tick(self, state, now_s):
        self.ticks += 1
        if self.ticks > 1:
            return []
        return [A.StartInstance("i-a0", "a", (0,), kv_fraction=0.5), A.StartInstance("i-b0", "b", (0,),
                                                                                       kv_fraction=0.5),
                A.StartInstance("i-a1", "a", (1,))]

    def route(self, state, model, now_s):
        for iid in ("i-a0", "i-a1") if model == "a" else ("i-b0",):
            inst = state.instances.get(iid)
            if inst is not None and inst.ready and not inst.draining:
                return A.Route(model, iid)
        return None


def _run(prompts, outputs, which, arrivals):
    tr = Trace(["a", "b"], np.asarray(arrivals, float), np.asarray(which, np.int32), np.asarray(prompts),
               np.asarray(outputs))
    w = Workload("hand", tr, Trace.empty(["a", "b"]), float(max(arrivals)) + 1.0)
    config = SimConfig(n_servers=1, gpus_per_server=2, drain_s=600.0, warmup_s=0.0, shared_search=False)
    sim = Simulator(w, [ServedModel("a", "llama2-7b"), ServedModel("b", "llama2-7b")], "dedicated", config=config,
                    cost=CostModel(gpu=GPU))
    sim.policy = sim.driver.policy = _Scripted()
    return sim, sim.run().summary


def test_a_request_too_long_for_the_co_served_share_is_served_by_the_instance_alone():
    # a's 19,000 + 1,000-token request needs 79 blocks: more than GPU 0 ever frees beside both shards, within
    # what GPU 1 holds beside a's alone
    assert blocks_for_tokens(20000) == 79
    sim, s = _run([19000, 100, 100], [1000, 20, 20], [0, 0, 1], [30.0, 30.5, 31.0])
    assert sim.engines.max_blocks(sim.insts["i-a0"]) == 67 and sim.state.instances["i-a1"].kv_blocks_total == 167
    assert s["refused"] == 0 and s["completed"] == 3
    assert not math.isnan(sim.finish[0])
    assert all(i.in_flight == 0 and i.prefill_tokens_pending == 0 for i in sim.state.instances.values())


def test_a_request_too_long_for_every_instance_is_still_refused():
    # 45,000 tokens need 176 blocks: more than even a's instance alone holds (167); refused there too, once
    sim, s = _run([44000, 100], [1000, 20], [0, 0], [30.0, 30.5])
    assert blocks_for_tokens(45000) == 176
    assert s["refused"] == 1 and s["completed"] == 1 and math.isnan(sim.finish[0])
