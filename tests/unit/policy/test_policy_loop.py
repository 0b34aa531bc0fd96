"""The whole policy run by the policy driver (instant executor) under random load: invariants hold at every step."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmserve.policy import POLICY_NAMES, PolicyConfig, make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.gpu_masks import is_laminar
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30
MODELS = [ModelInfo("s1", 10 * GiB, 1, 1 << 19), ModelInfo("s2", 10 * GiB, 1, 1 << 19),
          ModelInfo("m", 24 * GiB, 2, 1 << 20), ModelInfo("l", 100 * GiB, 4, 1 << 19),
          ModelInfo("xl", 200 * GiB, 8, 1 << 19)]
P = 288


def history():
    t = np.arange(2 * P)
    out = {}
    for k, m in enumerate(MODELS):
        base = 20 + 15 * np.sin(2 * np.pi * (t + 40 * k) / P)
        out[m.name] = (t * 300.0, base, base * 2.5)
    return out


def check(state: ClusterState, colocated: bool = False, laminar: bool = True, coserved=frozenset()):
    """``coserved``: instances the policy started co-served: they may share GPUs with each other, never with
    other instances."""
    by_server: dict[int, list[int]] = {}
    for p in state.prewarms.values():
        srv = {g // 8 for g in p.gpus}
        assert len(srv) == 1 and len(p.gpus) == state.models[p.model].tp
        by_server.setdefault(srv.pop(), []).append(sum(1 << (g % 8) for g in p.gpus))
    for masks in by_server.values():
        assert is_laminar(masks) or not laminar
    assert min(state.free_bytes_on()) >= 0
    owner: dict[int, str] = {}
    for inst in state.instances.values():
        for g in inst.gpus:
            both_co = inst.instance_id in coserved and owner.get(g) in coserved
            assert colocated or both_co or g not in owner, "two instances on one GPU"
            owner[g] = inst.instance_id
    for p in state.prewarms.values():
        for q in state.prewarms.values():
            if p is not q and p.model == q.model:
                assert not set(p.gpus) & set(q.gpus)


def run(name, loads, seed=0, **cfg):
    state = ClusterState.uniform(2, MODELS, gpu_bytes=60 * GiB)
    pol = make_policy(name, models=MODELS, config=PolicyConfig(replan_s=20.0, **cfg), history=history())
    driver = instant_driver(pol, state)
    now = 2 * 86400.0
    rng = np.random.default_rng(seed)
    n = 0
    for step, level in enumerate(loads):
        now += 3.0
        for inst in list(state.instances.values()):  # requests finish
            for _ in range(inst.in_flight - int(rng.integers(0, inst.in_flight + 1))):
                driver.request_finished(inst.model, inst.instance_id, now, route=False)
            inst.kv_blocks_used = min(inst.kv_blocks_total, inst.in_flight * 2)
        for k, m in enumerate(MODELS):  # requests arrive
            for _ in range(int(level[k % len(level)])):
                n += 1
                starts = len(state.instances)
                driver.submit(m.name, n, now)
                if len(state.instances) != starts:
                    check(state, colocated=name == "shared", laminar=name != "round-robin-placement",
                          coserved=pol._co.ids if pol._co is not None else frozenset())
        driver.tick(now)
        check(state, colocated=name == "shared", laminar=name != "round-robin-placement",
              coserved=pol._co.ids if pol._co is not None else frozenset())
        if step % 7 == 0:
            now += 300.0  # jump over a window so plans are redone
    return state, pol


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=5), min_size=1, max_size=14))
def test_invariants_hold_under_random_load(loads):
    run("warmserve", loads)
    run("warmserve", loads, coserve_always=True)  # light models co-served: they share GPUs only with each other
    run("warmserve", loads, kv_shrink_on_demand=True)  # prewarms placed in KV room unmapped in the same tick
    run("warmserve", loads, scale_in_hold_s=30.0)  # instances held past their load while no one wants GPUs
    run("warmserve", loads, scale_in_window_s=30.0)  # scale-in on a 30 s mean, while others want GPUs too


def test_every_policy_runs_a_day_segment():
    loads = [[5, 30, 0, 60, 2]] * 6 + [[0, 0, 0, 0, 0]] * 4 + [[40, 40, 40, 40, 40]] * 4
    for name in POLICY_NAMES:
        state, pol = run(name, loads)
        if name in ("autoscale", "shared", "dedicated"):
            assert not state.prewarms
    # forecasts of bursts left prewarmed replicas once the load is quiet (under the last, over-subscribing
    # phase, instances of every model fill the GPUs and their KV caches take the memory)
    state, _ = run("warmserve", loads[:10])
    assert state.prewarms


def test_static_layouts():
    state = ClusterState.uniform(2, MODELS, gpu_bytes=60 * GiB)
    pol = make_policy("dedicated", models=MODELS, history=history())
    driver = instant_driver(pol, state)
    for a in pol.tick(state, 0.0):
        driver.apply(a, 0.0)
    assert {i.model for i in state.instances.values()} <= {m.name for m in MODELS}
    assert len(state.busy_gpus()) >= 14  # the xl model alone takes a whole server
    assert pol.tick(state, 1.0) == []
    state = ClusterState.uniform(2, MODELS, gpu_bytes=60 * GiB)
    pol = make_policy("shared", models=MODELS, history=history())
    acts = pol.tick(state, 0.0)
    colocated = [a for a in acts if a.kv_fraction < 1.0]
    assert colocated and {a.model for a in acts} >= {"s1", "s2", "m"}
