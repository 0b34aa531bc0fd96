"""A model alone in its GPU group needs only its shard and one KV block there, the test every other placement uses
(``ClusterState.unservable``, ``Board.choose_for_instance``); the 80% weight share (``colocation.WEIGHT_SHARE``)
binds only models that share a group. Found in review (issue #11): a 65 GB tp-1 model on 77 GB GPUs (84% of one,
12 GB left for its KV cache) got no slot in `shared`'s layout, its search or warmserve's colocation, which were
refused, although a dedicated instance of it serves."""

from collections import deque

import numpy as np
import pytest

from warmserve.geometry import PAGE_BYTES
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.colocation import WEIGHT_SHARE, SharedLayout, UnplacedModelError, placement_order, plan_shared
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, GpuState, ModelInfo, ServerState, kv_blocks_for

GB = 10**9
#: the GPUs of the issue: 77 GB each
GPU_BYTES = 77 * GB
DAY = 86400.0


def _big(name="big", weight=65 * GB):
    """A tp-1 model whose weights take 84% of a 77 GB GPU (12 GB left: about 90 of its 128 MiB KV blocks)."""
    return ModelInfo(name, weight, 1, 524_288, 0.08, 0.025)


def _7b(name):
    return ModelInfo(name, 13_500_000_000, 1, 524_288, 0.035, 0.015)


def _plan(models, n_gpus, layout=None, demand=None):
    st = ClusterState.uniform(1, models, gpus_per_server=n_gpus, gpu_bytes=GPU_BYTES)
    by_name = {m.name: m for m in models}
    demand = demand or {m.name: 1.0 for m in models}
    return st, plan_shared(st, by_name, placement_order(by_name, demand), demand, layout)


def _hosted(plan):
    return {g: [m for m, _ in h] for g, h in plan}


def _check_shares(st, plan):
    """Every group that hosts two or more models keeps their shards within WEIGHT_SHARE of its GPUs."""
    for g, h in plan:
        if len(h) > 1:
            assert sum(st.models[m].shard_bytes for m, _ in h) <= WEIGHT_SHARE * GPU_BYTES, (g, h)


@pytest.mark.parametrize("big_demand", [0.1, 1.0, 10.0])
def test_a_model_above_the_weight_share_runs_alone_on_a_group_of_its_own(big_demand):
    """The issue's cluster: 4 GPUs, the 65 GB model and three 7Bs. Whatever its demand (placed before or after the
    light models), it gets a GPU to itself with all the KV room its shard leaves, and the light models share the
    others within the weight share."""
    models = [_big(), _7b("a"), _7b("b"), _7b("c")]
    demand = {"big": big_demand, "a": 1.0, "b": 1.0, "c": 1.0}
    st, plan = _plan(models, 4, demand=demand)
    hosted = _hosted(plan)
    assert {m for ms in hosted.values() for m in ms} == {"big", "a", "b", "c"}
    (g,) = [g for g, ms in hosted.items() if "big" in ms]
    assert hosted[g] == ["big"]
    ((_, frac),) = dict(plan)[g]
    assert frac == pytest.approx(1.0)
    big = st.models["big"]
    assert kv_blocks_for(st, "big", g, frac) == (GPU_BYTES - big.shard_bytes) // big.kv_block_bytes
    _check_shares(st, plan)


def test_the_default_layout_puts_the_others_together_when_a_lone_model_takes_a_group():
    """2 GPUs, the default two models per group: the 65 GB model takes one GPU alone, so the three 7Bs (40.5 GB,
    within 80% of 77 GB) share the other; two per group would leave one of them out."""
    st, plan = _plan([_big(), _7b("a"), _7b("b"), _7b("c")], 2)
    assert sorted(sorted(ms) for ms in _hosted(plan).values()) == [["a", "b", "c"], ["big"]]
    _check_shares(st, plan)


def test_models_that_share_a_group_still_keep_to_the_weight_share():
    """Two 35 GB models: 70 GB on one 77 GB GPU would leave 7 GB of KV (more than a block each) but is over 80%, so
    one GPU is refused, and two give each a GPU alone. Nor may a light model join a lone model's GPU, although
    65 + 5 GB leave room for a KV block."""
    pair = [_big("x", 35 * GB), _big("y", 35 * GB)]
    with pytest.raises(UnplacedModelError, match="80%"):
        _plan(pair, 1)
    st, plan = _plan(pair, 2)
    assert sorted(_hosted(plan).values()) == [["x"], ["y"]]
    assert all(f == pytest.approx(1.0) for _, h in plan for _, f in h)
    with pytest.raises(UnplacedModelError, match="80%") as e:
        _plan([_big(), _big("small", 5 * GB)], 1, SharedLayout(((1, 1),), 2))
    assert e.value.model == "small"


def test_a_lone_model_still_needs_one_kv_block_beside_its_shard():
    """The bound is that of ``ClusterState.unservable``: a shard that leaves exactly one KV block is placed, one
    page more is not (and the cluster calls it unservable)."""
    block = _big().kv_block_bytes
    fits = (GPU_BYTES - block) // PAGE_BYTES * PAGE_BYTES
    _, plan = _plan([_big("edge", fits), _7b("a")], 2)
    assert ["edge"] in _hosted(plan).values()
    over = [_big("edge", fits + PAGE_BYTES), _7b("a")]
    with pytest.raises(UnplacedModelError) as e:
        _plan(over, 2)
    assert e.value.model == "edge"
    assert "edge" in ClusterState.uniform(1, over, gpus_per_server=2, gpu_bytes=GPU_BYTES).unservable()


def test_warmserve_colocates_around_a_lone_model_when_oversubscribed():
    """warmserve's first-tick colocation (``colocating.Colocating``, plan_shared's default layout): four models
    with demand on 2 GPUs. The layout was refused (the 65 GB model got no slot) and the rules started what fit;
    now the 65 GB model has a GPU to itself and the three 7Bs share the other, all at the first tick."""
    models = [_big(), _7b("a"), _7b("b"), _7b("c")]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=GPU_BYTES)
    t = np.arange(2 * 288)
    hist = {m.name: (t * 300.0, np.full(len(t), 1.0), np.full(len(t), 2.0)) for m in models}
    pol = make_policy("warmserve", models=models, config=PolicyConfig(colocate_when_oversubscribed=True),
                      history=hist)
    d = instant_driver(pol, st)
    d.tick(2 * DAY)
    on = {}
    for inst in st.instances.values():
        on.setdefault(inst.gpus, []).append(inst.model)
    assert sorted(sorted(ms) for ms in on.values()) == [["a", "b", "c"], ["big"]]


@pytest.mark.parametrize("search", [True, False], ids=["searched layout", "default layout"])
def test_the_shared_baseline_serves_a_lone_model_in_the_simulator(search):
    """`warmserve simulate --policy shared` on 2 GPUs of 77 GB with the 65 GB model and two 7Bs: the layout search
    tried no layout that placed it, nor did the default, and the run was refused; now every request is answered."""
    from warmserve.sim.config import ServedModel, SimConfig
    from warmserve.sim.costmodel import CostModel, GpuType, ModelCost
    from warmserve.sim.simulator import Simulator
    from warmserve.workload.request import Trace, Workload

    big = ModelCost(weight_bytes=65e9, tp=1, kv_bytes_per_token=524_288, prefill_base_s=0.01,
                    prefill_per_token_s=1e-4, decode_base_s=0.03)
    cost = CostModel(gpu=GpuType(memory_bytes=GPU_BYTES, pool_fraction=1.0))
    cost = CostModel(gpu=cost.gpu, models={**cost.models, "big": big})
    names = ["big", "a", "b"]
    n = 30
    tr = Trace(names, np.linspace(0.0, 20.0, n), np.arange(n, dtype=np.int32) % 3, np.full(n, 500),
               np.full(n, 50))
    hist = Trace(names, np.array([-50.0, -40.0, -30.0]), np.array([0, 1, 2], np.int32), np.full(3, 500),
                 np.full(3, 50))
    w = Workload("hand", tr, hist, 21.0, clock0_s=3600.0)
    cfg = SimConfig(n_servers=1, gpus_per_server=2, drain_s=600.0, warmup_s=0.0, shared_search=search)
    served = [ServedModel("big"), ServedModel("a", "llama2-7b"), ServedModel("b", "llama2-7b")]
    sim = Simulator(w, served, "shared", config=cfg, cost=cost)
    s = sim.run().summary
    assert s["completed"] == n and s["refused"] == 0


def _mixed_cluster(sizes, models):
    """One server whose GPUs have ``sizes`` bytes each (a mixed fleet: each group's share is of its own GPU)."""
    gpus = [GpuState(g, 0, b) for g, b in enumerate(sizes)]
    return ClusterState([ServerState(0, tuple(range(len(sizes))))], gpus, {m.name: m for m in models},
                        queues={m.name: deque() for m in models})


def _mixed_models(a_bytes, light_bytes):
    return [ModelInfo(n, w, 1, 524_288, 0.035, 0.015) for n, w in
            [("A", a_bytes), ("B", light_bytes), ("C", light_bytes), ("D", light_bytes)]]


def test_a_model_within_a_larger_groups_share_does_not_take_a_smaller_group_alone():
    """A 40 GB and an 80 GB GPU, a 35 GB model A (over 80% of the 40 GB GPU, within 80% of the 80 GB one) and
    three 10 GB models, A the busiest. Found in review: the lone-model rule let A take the 40 GB GPU alone (it tied
    on load), so two slots were left for three models and the layout was refused ("model 'D' gets no instance: its
    10.0 GB shard does not fit", which it does), as was `shared`'s first tick. Only a model over every group's share
    runs alone: A shares the 80 GB GPU, as before the lone rule, and every model has an instance."""
    models = _mixed_models(35 * GB, 10 * GB)
    demand = {"A": 4.0, "B": 1.0, "C": 1.0, "D": 1.0}
    st = _mixed_cluster([40 * GB, 80 * GB], models)
    by_name = {m.name: m for m in models}
    plan = plan_shared(st, by_name, placement_order(by_name, demand), demand)
    assert sorted((g, sorted(ms)) for g, ms in _hosted(plan).items()) == [((0,), ["B", "C"]), ((1,), ["A", "D"])]
    for g, h in plan:  # each group within the share of its own GPU
        assert sum(by_name[m].shard_bytes for m, _ in h) <= WEIGHT_SHARE * st.gpus[g[0]].total_bytes, (g, h)
    pol = make_policy("shared", models=models, config=PolicyConfig())
    d = instant_driver(pol, st)
    for m in by_name:
        d.submit(m, f"{m}#1", 0.0)
    d.tick(0.5)
    on = {}
    for inst in st.instances.values():
        on.setdefault(inst.gpus, []).append(inst.model)
    assert sorted((g, sorted(ms)) for g, ms in on.items()) == [((0,), ["B", "C"]), ((1,), ["A", "D"])]


def test_the_unplaced_model_message_names_the_rule_that_bound_it():
    """A model within a group's share is held to the share (the alone rule is not offered to it): its message says
    80% and not that it may run alone. A model over every group's share that fits no group alone: the message names
    its shard and KV block."""
    st = _mixed_cluster([40 * GB, 80 * GB], _mixed_models(35 * GB, 20 * GB))
    by_name = dict(st.models)
    demand = {m: 1.0 for m in by_name}
    with pytest.raises(UnplacedModelError, match="80%") as e:
        plan_shared(st, by_name, placement_order(by_name, demand), demand)
    assert e.value.model == "D"
    assert "20.0 GB" in str(e.value) and "alone" not in str(e.value)
    big = _big("big", 70 * GB)
    st = _mixed_cluster([40 * GB, 64 * GB], [big, _7b("a")])
    by_name = dict(st.models)
    demand = {m: 1.0 for m in by_name}
    with pytest.raises(UnplacedModelError, match="alone") as e:
        plan_shared(st, by_name, placement_order(by_name, demand), demand)
    assert e.value.model == "big"
    assert "70.0 GB" in str(e.value) and f"{big.kv_block_bytes / 2**20:.0f} MiB KV block" in str(e.value)
