"""How the simulator times starts and prewarm copies: the TTFT of a request that waits for a start from a prewarm
still loading (the rest of the load, the activation, its prefill on the idle instance), the progress a loading
prewarm reports, and the GPU time of instances still held when the run ends. Scripted policies on one GPU (the
pattern of ``test_sim_kept_while_loading``) where no real policy can be steered into the state; `dedicated` for
the GPU time."""

import numpy as np
import pytest

from warmserve.policy import actions as A
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel, GpuType
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

from scripted_policy import ScriptedPolicy

ARRIVAL_S, PROMPT, OUTPUT = 0.05, 100, 10


class _FromLoadingPrewarm(ScriptedPolicy):
    def __init__(self):
        self.ticks = 0

    def tick(self, state, now_s):
        self.ticks += 1
        if self.ticks == 1:
            return [A.Prewarm("p-1", "a", (0,), 1.0)]
        if self.ticks == 2:
            return [A.StartInstance("i-1", "a", (0,), prewarm_id="p-1")]
        return []

    def route(self, state, model, now_s):
        inst = state.instances.get("i-1")
        return A.Route(model, "i-1") if inst is not None and inst.ready else None


def _run():
    tr = Trace(["a"], np.asarray([ARRIVAL_S]), np.zeros(1, np.int32), np.asarray([PROMPT]), np.asarray([OUTPUT]))
    w = Workload("hand", tr, Trace.empty(["a"]), 21.0)
    config = SimConfig(n_servers=1, gpus_per_server=1, drain_s=600.0, warmup_s=0.0, shared_search=False,
                       tick_s=0.1)
    sim = Simulator(w, [ServedModel("a", "llama2-7b")], "warmserve", config=config,
                    cost=CostModel(gpu=GpuType(memory_bytes=40e9)))
    sim.policy = sim.driver.policy = _FromLoadingPrewarm()
    return sim, sim.run()


def test_a_start_from_a_loading_prewarm_is_ready_an_activation_after_the_copy_ends():
    """The prewarm's copy runs from the first tick (t=0) for load_s; the start at the second tick (0.1 s) is
    ready at load_s + activation_s; the request that waited since 0.05 s gets its first token a prefill later."""
    sim, r = _run()
    c = sim.counts["measured"]
    assert (c["total"], c["hit"], c["loading"], c["cold"]) == (1, 0, 1, 0)
    load_s = sim.cost.load_s(sim.mcost[0])
    assert load_s > 0.1  # still copying at the second tick
    ready = load_s + sim.cost.activation_s
    assert sim.first[0] == pytest.approx(ready + sim.cost.prefill_s(sim.mcost[0], PROMPT), abs=1e-9)
    assert r.summary["ttft_p50_s"] == pytest.approx(sim.first[0] - ARRIVAL_S, abs=1e-9)
    assert r.summary["starts_from_loading_prewarm"] == 1 and r.summary["completed"] == 1


def test_a_gpu_still_held_at_the_end_counts_only_the_time_it_was_held():
    """`dedicated` cold-starts one instance on each of two GPUs at t=0, both still held (still loading) when a
    0.5 s trace with no request ends: 2 x 0.5 GPU-seconds (both figures), a utilisation of 1.0 / (2 GPUs x 0.5 s)."""
    w = Workload("idle", Trace.empty(["a"]), Trace.empty(["a"]), 0.5)
    config = SimConfig(n_servers=1, gpus_per_server=2, drain_s=600.0, warmup_s=0.0, shared_search=False,
                       tick_s=0.1)
    sim = Simulator(w, [ServedModel("a", "llama2-7b")], "dedicated", config=config,
                    cost=CostModel(gpu=GpuType(memory_bytes=40e9)))
    s = sim.run().summary
    assert (s["instance_starts"], s["starts_cold"], s["end_s"]) == (2, 2, 0.5)
    assert s["gpu_seconds"] == pytest.approx(1.0) and s["gpu_seconds_holding"] == pytest.approx(1.0)
    assert s["gpu_utilization"] == pytest.approx(1.0)


class _PrewarmAndWatch(ScriptedPolicy):
    def __init__(self):
        self.seen = []
        self.routed = []

    def tick(self, state, now_s):
        if "p-1" not in state.prewarms:
            return [A.Prewarm("p-1", "a", (0,), 1.0)]
        self.seen.append((now_s, state.prewarms["p-1"].progress))
        return []

    def route(self, state, model, now_s):
        self.routed.append((now_s, state.prewarms["p-1"].progress))
        return None


def test_a_loading_prewarm_reports_the_fraction_of_its_copy_done():
    """A prewarm whose copy runs from t=0 for load_s: at each later tick the policy sees now / load_s of it
    loaded, and 1.0 once the copy has ended; a request arriving after the copy's end but before the next tick
    already sees it loaded (the copy's end is an event, not left to the tick)."""
    cost = CostModel(gpu=GpuType(memory_bytes=40e9))
    load_s = cost.load_s(cost.cost("a", "llama2-7b"))
    assert 0.3 < load_s < 0.9
    arrival = (load_s + 0.1 * (int(load_s / 0.1) + 1)) / 2  # between the copy's end and the next tick
    tr = Trace(["a"], np.asarray([arrival]), np.zeros(1, np.int32), np.asarray([PROMPT]), np.asarray([OUTPUT]))
    w = Workload("idle", tr, Trace.empty(["a"]), 1.0)
    config = SimConfig(n_servers=1, gpus_per_server=1, drain_s=1.0, warmup_s=0.0, shared_search=False,
                       tick_s=0.1)
    sim = Simulator(w, [ServedModel("a", "llama2-7b")], "warmserve", config=config, cost=cost)
    sim.policy = sim.driver.policy = watch = _PrewarmAndWatch()
    sim.run()
    loading = [(t, f) for t, f in watch.seen if t < load_s]
    assert len(loading) >= 3
    for t, f in loading:
        assert f == pytest.approx(t / load_s)
    assert [f for t, f in watch.seen if t >= load_s] == [1.0] * (len(watch.seen) - len(loading)) != []
    assert watch.routed[0] == (arrival, 1.0)


class _DropBehindAColdLoad(ScriptedPolicy):
    def __init__(self):
        self.ticks = 0
        self.seen = []

    def tick(self, state, now_s):
        self.ticks += 1
        if "p-2" in state.prewarms:
            self.seen.append((now_s, state.prewarms["p-2"].progress))
        if self.ticks == 1:
            return [A.StartInstance("i-1", "a", (0,)), A.Prewarm("p-1", "b", (0,), 1.0)]
        if self.ticks == 2:
            return [A.Evict("p-1")]
        if self.ticks == 3:
            return [A.Prewarm("p-2", "b", (0,), 1.0)]
        return []


def test_dropping_a_queued_prewarm_leaves_the_link_to_a_cold_load_still_copying():
    """At t=0 a cold start copies over the GPU's link until load_s and a prewarm queues behind it; the prewarm
    is evicted at 0.1 s, and another one asked for at 0.2 s still waits for the cold copy: it copies from load_s
    to 2 load_s, so the policy sees max(0, (t - load_s) / load_s) of it at each tick, not a copy from 0.2 s."""
    w = Workload("idle", Trace.empty(["a", "b"]), Trace.empty(["a", "b"]), 1.5)
    config = SimConfig(n_servers=1, gpus_per_server=1, drain_s=1.0, warmup_s=0.0, shared_search=False,
                       tick_s=0.1)
    sim = Simulator(w, [ServedModel("a", "llama2-7b"), ServedModel("b", "llama2-7b")], "warmserve",
                    config=config, cost=CostModel(gpu=GpuType(memory_bytes=80e9)))
    sim.policy = sim.driver.policy = pol = _DropBehindAColdLoad()
    s = sim.run().summary
    load_s = sim.cost.load_s(sim.mcost[0])
    assert 0.2 < load_s < 0.6 and s["evictions"] == 1 and s["starts_cold"] == 1
    assert pol.seen[0][1] == 0.0 and pol.seen[-1][1] == 1.0
    for t, f in pol.seen:
        assert f == pytest.approx(min(1.0, max(0.0, (t - load_s) / load_s))), (t, f)
