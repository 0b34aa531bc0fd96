"""The `shared` baseline: no model silently left without an instance, the layout search, time-sharing."""

from dataclasses import replace

import numpy as np
import pytest

from warmserve.policy.colocation import SharedLayout, UnplacedModelError, floored, placement_order, plan_shared
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.presets import paper_preset
from warmserve.sim.shared_search import score, workload_stats
from warmserve.sim.simulator import Simulator, simulate
from warmserve.workload.recipes import paper_workload
from warmserve.workload.request import Trace, Workload


def _twelve(rate_rps=6.0, history_days=1):
    p = paper_preset("conv", n_models=12, total_rate_rps=rate_rps, history_days=history_days)
    return p, p.build(1.0, 0)


def _short(p):
    """``p``'s workload (rate scale 1, seed 0) over a sixth of its span, 200 s after 100 s of warm-up: the layout
    search runs each of its shortlisted candidates as a whole run. Halved from 400 s after 200 s when the suite was
    timed (13 s): each of the 12 models still has requests (33 or more), and the 12-model search's candidates
    still differ in SLO attainment (1.0, 0.95, 0.70, 0.65), so keeping the best of them is still a choice."""
    return paper_workload("conv", len(p.models), alpha=p.alpha, total_rate_rps=p.base_rate_rps, duration_s=200.0,
                          pre_s=100.0, history_days=p.history_days, model_names=[m.name for m in p.models], seed=0)


def test_default_shared_layout_gives_every_model_an_instance():
    """12 models, two 70B copies: before the fix the second 70B's only replica found both 4-GPU groups full of
    the first's replicas and silently got no instance (0 of its requests answered: the issue's
    `warmserve simulate --preset paper-conv --models 12 --policy shared --seeds 0 --no-search`, 24 rps)."""
    p, w = _twelve(24.0, 3)  # the preset's defaults
    r = simulate(w, p.models, "shared", config=replace(p.config, shared_search=False))
    for m, s in r.per_model.items():
        assert s["requests"] == 0 or s["completed"] > 0, m
    assert r.per_model["llama2-70b-b"]["completed"] > 0


def test_a_layout_that_cannot_place_a_model_raises_naming_it():
    p, w = _twelve()
    sim = Simulator(w, p.models, "shared", config=replace(p.config, shared_search=False))
    models = sim.policy.models
    demand = {m: 1.0 for m in models}
    order = sorted(models, key=lambda m: (-models[m].tp, m))
    with pytest.raises(UnplacedModelError) as e:  # one 4-GPU group cannot hold two 70B shards
        plan_shared(sim.state, models, order, demand, SharedLayout(((4, 1), (2, 2), (1, 8)), 2))
    assert e.value.model == "llama2-70b-b" and "more groups" in str(e.value)


def test_searched_shared_layout_serves_every_model_and_beats_the_default_score():
    p = paper_preset("conv", n_models=12, total_rate_rps=6.0, history_days=1)
    w = _short(p)
    sim = Simulator(w, p.models, "shared", config=p.config)
    rec = sim.shared_search
    # the layout kept is the simulated one of best SLO attainment (a throughput score alone passed over better ones)
    assert rec["candidates"] >= 2 and len(rec["simulated"]) >= 2
    assert rec["slo_attainment"] == max(c["slo_attainment"] for c in rec["simulated"])
    # the chosen layout, as the policy lays it out (shares floored), scores what the search recorded, and at
    # least the demand-proportional one (below)
    models = sim.policy.models
    ctx = sim.policy.cfg.coserve_context_tokens
    demand = dict(sim.policy.layout.demand)
    order = sorted(models, key=lambda m: (-models[m].tp, -demand[m], m))
    chosen = score(sim, floored(sim.state, plan_shared(sim.state, models, order, demand, sim.policy.layout), models,
                                ctx), workload_stats(sim))
    assert chosen == pytest.approx(rec["rate_multiple"])
    r = sim.run()
    for m, s in r.per_model.items():
        assert s["requests"] == 0 or s["completed"] > 0, m
    p7 = paper_preset("conv", total_rate_rps=6.0, history_days=1)
    sim7 = Simulator(_short(p7), p7.models, "shared", config=p7.config)
    m7 = sim7.policy.models
    d7 = dict(sim7.policy.layout.demand)
    o7 = sorted(m7, key=lambda m: (-m7[m].tp, -d7[m], m))
    default = score(sim7, floored(sim7.state, plan_shared(sim7.state, m7, o7, d7, None), m7, ctx),
                    workload_stats(sim7))
    assert sim7.shared_search["rate_multiple"] >= default


def test_colocated_instances_time_share_their_gpu():
    """Two 7B models on one GPU, each with one long request at once: every iteration takes twice as long while
    both are busy (the interference model: time-sharing), so each request's decode takes nearly twice as long
    (the two start decoding one prefill apart)."""
    names = ["a", "b"]
    n = 2
    tr = Trace(names, np.array([0.0, 0.0]), np.array([0, 1], np.int32), np.full(n, 100), np.full(n, 201))
    w = Workload("two", tr, Trace.empty(names), 1.0)
    cfg = SimConfig(n_servers=1, gpus_per_server=1, warmup_s=0.0, drain_s=600)
    served = [ServedModel("a", "llama2-7b"), ServedModel("b", "llama2-7b")]
    sim = Simulator(w, served, "shared", config=cfg)
    sim.run()
    alone = Simulator(Workload("one", Trace(["a"], np.array([0.0]), np.zeros(1, np.int32), np.full(1, 100),
                                            np.full(1, 201)), Trace.empty(["a"]), 1.0),
                      [served[0]], "shared", config=cfg)
    alone.run()
    both = sim.finish[0] - sim.first[0]
    one = alone.finish[0] - alone.first[0]
    assert 1.8 * one < both <= 2 * one + 1e-9


def test_a_gpu_shared_by_instances_counts_once_in_gpu_seconds():
    """Two models colocated on the only GPU: the run holds one GPU, not two (before the fix GPU-seconds summed
    instances x GPUs, and `shared` on paper-code reported 28,844 GPU-s on 16 GPUs over 1,200 s)."""
    names = ["a", "b"]
    tr = Trace(names, np.array([0.0, 0.0]), np.array([0, 1], np.int32), np.full(2, 100), np.full(2, 201))
    cfg = SimConfig(n_servers=1, gpus_per_server=1, warmup_s=0.0, drain_s=600)
    served = [ServedModel("a", "llama2-7b"), ServedModel("b", "llama2-7b")]
    r = simulate(Workload("two", tr, Trace.empty(names), 20.0), served, "shared", config=cfg)
    assert r.summary["gpu_seconds"] == pytest.approx(r.summary["end_s"], rel=1e-6)
    assert r.summary["gpu_utilization"] <= 1.0 + 1e-9


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_the_default_layout_gives_each_class_the_groups_its_shards_need_within_the_cluster(alpha):
    """Two 70B copies need two 4-GPU groups (their shards do not fit one), whatever their demand (found in review:
    one group left the second without an instance); the groups that floor adds come out of the other classes
    (found in review of that fix: 12 models on 16 GPUs asked for 20 GPUs at alpha 2)."""
    from warmserve.policy.colocation import default_groups
    from warmserve.policy.state import ClusterState
    from warmserve.sim.costmodel import CostModel
    from warmserve.sim.presets import paper_models
    from warmserve.sim.inputs import model_infos

    infos = model_infos(paper_models(12), CostModel())
    st = ClusterState.uniform(2, infos, gpus_per_server=8, gpu_bytes=CostModel().gpu.pool_bytes)
    models = {m.name: m for m in infos}
    order = [m.name for m in infos]
    demand = {m: (i + 1.0) ** -alpha for i, m in enumerate(order)}
    groups = dict(default_groups(st, models, order, demand))
    assert groups[4] >= 2 and all(n >= 1 for n in groups.values())
    assert sum(tp * n for tp, n in groups.items()) <= 16
    placed = {m for _, hosted in plan_shared(st, models, order, demand) for m, _ in hosted}
    assert placed == set(models)


def test_the_search_scores_layouts_with_their_shares_floored(monkeypatch):
    """Two 7B models on one 40 GB GPU, one sending a 9,000-token request: `shared`'s search scores each candidate
    as the policy lays it out, that model's share floored to hold the request (``colocation.floored``, which takes
    the room from the group's other shares), and the run answers it. Each plan the search scores is checked by its
    fractions, not through ``kv_blocks_for``, which raises a share to the context wherever it counts one (as the
    live executor does), so a score alone no longer tells a floored plan from one by demand."""
    from warmserve.geometry import blocks_for_tokens
    from warmserve.sim import shared_search
    from warmserve.sim.config import ServedModel, SimConfig
    from warmserve.sim.costmodel import CostModel, GpuType
    from warmserve.workload.request import Trace, Workload

    scored = []
    real_score = shared_search.score
    monkeypatch.setattr(shared_search, "score", lambda sim, plan, stats: scored.append(plan) or real_score(
        sim, plan, stats))
    names = ["a", "b"]
    tr = Trace(names, np.array([0.0, 0.1, 0.2]), np.array([0, 1, 1], np.int32), np.array([8000, 100, 700]),
               np.array([1000, 100, 10]))
    # a history before the replay, so the search has rates and lengths to weigh (steps 1-3 of its doc)
    hist = Trace(names, np.array([-50.0, -40.0, -30.0, -20.0]), np.array([0, 1, 1, 1], np.int32),
                 np.array([500, 100, 100, 100]), np.array([100, 50, 50, 50]))
    w = Workload("hand", tr, hist, 1.0, clock0_s=3600.0)
    cfg = SimConfig(n_servers=1, gpus_per_server=1, drain_s=600.0, warmup_s=60.0)
    served = [ServedModel(m, "llama2-7b") for m in names]
    sim = Simulator(w, served, "shared", config=cfg, cost=CostModel(gpu=GpuType(memory_bytes=40e9)))
    layout, models = sim.policy.layout, sim.policy.models
    demand = dict(layout.demand)
    plan = plan_shared(sim.state, models, placement_order(models, demand), demand, layout)
    ctx = sim.policy.cfg.coserve_context_tokens
    assert floored(sim.state, plan, models, ctx) != plan  # the floor binds here
    room = sim.state.gpus[0].total_bytes - models["a"].shard_bytes
    blocks_of_a = [int(room * f) // models["a"].kv_block_bytes for p in scored for _, hosted in p
                   for m, f in hosted if m == "a"]
    assert blocks_of_a and min(blocks_of_a) >= blocks_for_tokens(9000)
    s = sim.run().summary
    assert s["refused"] == 0 and s["completed"] == 3
