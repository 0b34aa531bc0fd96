"""What the tuning round added: stopped instances keep their weights as prewarms, route() skips the placement
board when no GPU is free, scale-ups pack so that whole blocks stay free, and `shared` uses every GPU."""

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy import core
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, InstanceState, ModelInfo


def _models():
    return [ModelInfo(n, 13_500_000_000, 1, 524_288) for n in "ab"] + [ModelInfo("big", 138_000_000_000, 4, 327_680)]


def _add(st, iid, model, gpus, in_flight=0, ready_s=0.0):
    st.instances[iid] = InstanceState(iid, model, tuple(gpus), created_s=0.0, ready_s=ready_s, in_flight=in_flight,
                                      kv_blocks_total=100, kv_blocks_mapped=100)


def _policy(name="warmserve", **cfg):
    models = _models()
    st = ClusterState.uniform(1, models, gpu_bytes=72 << 30)
    # replan_s so long that no plan runs after the first tick: only the retention adds prewarms
    pol = make_policy(name, models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6, **cfg))
    return pol, st


def _prewarms(acts):
    return [a for a in acts if isinstance(a, A.Prewarm)]


def test_an_idle_stopped_instance_leaves_its_weights_as_a_prewarm_in_the_same_tick():
    pol, st = _policy()
    _add(st, "i1", "a", [0], in_flight=0)
    _add(st, "i2", "a", [1], in_flight=0)
    _add(st, "i3", "a", [2], in_flight=0)
    acts = pol.tick(st, 100.0)  # load 0 < 0.5 * 96: scale in, to 1 (the last stays while GPUs are free)
    stopped = {a.instance_id for a in acts if isinstance(a, A.StopInstance)}
    assert stopped == {"i1", "i2"}
    kept = _prewarms(acts)
    assert sorted(p.gpus for p in kept) == [(0,), (1,)] and {p.model for p in kept} == {"a"}
    driver = instant_driver(pol, st)
    for a in acts:
        driver.apply(a, 100.0)
    assert list(st.instances) == ["i3"] and len(st.prewarms) == 2
    assert [type(p) for p in kept] == [A.Prewarm] * 2 and {p.kept_from for p in kept} == {"i1", "i2"}
    assert (all(p.loaded for p in st.prewarms.values())
            and driver.executor.log.count(("load_prewarm", kept[0].prewarm_id)) == 0)
    st.queues["a"].append("r1")
    st.instances["i3"].in_flight = 32
    act = pol.route(st, "a", 101.0, "r1")  # the next scale-out is a hit
    assert isinstance(act, A.StartInstance) and act.prewarm_id in {p.prewarm_id for p in kept}


def test_a_draining_instance_leaves_its_weights_once_it_is_gone():
    pol, st = _policy()
    _add(st, "i1", "a", [0], in_flight=3)
    _add(st, "i2", "a", [1], in_flight=4)
    _add(st, "i3", "a", [2], in_flight=5)
    acts = pol.tick(st, 100.0)  # load 12: target ceil(12 / 16) = 1, stop the two emptiest
    assert [a.instance_id for a in acts if isinstance(a, A.StopInstance)] == ["i1", "i2"]
    assert not _prewarms(acts)  # still draining: their GPUs are busy
    driver = instant_driver(pol, st)
    for a in acts:
        driver.apply(a, 100.0)
    assert not _prewarms(pol.tick(st, 101.0))
    st.instances["i1"].in_flight = 0
    del st.instances["i1"]  # drained: the driver removes it
    kept = _prewarms(pol.tick(st, 102.0))
    assert [(p.model, p.gpus) for p in kept] == [("a", (0,))]


def test_baselines_without_prewarming_keep_nothing():
    for name in ("autoscale", "dedicated"):
        pol, st = _policy(name) if name == "autoscale" else _policy("warmserve", prewarm=False)
        _add(st, "i1", "a", [0], in_flight=0)
        _add(st, "i2", "a", [1], in_flight=0)
        assert not _prewarms(pol.tick(st, 100.0))
    pol, st = _policy(retain_stopped=False)
    _add(st, "i1", "a", [0], in_flight=0)
    assert not _prewarms(pol.tick(st, 100.0))


def test_route_on_a_full_cluster_builds_no_board(monkeypatch):
    pol, st = _policy(prewarm=False)
    for g in range(8):
        _add(st, f"i{g}", "a" if g < 4 else "b", [g], in_flight=40)

    def boom(*a, **k):
        raise AssertionError("route built a Board with no GPU free")

    monkeypatch.setattr(core, "Board", boom)
    act = pol.route(st, "a", 100.0, "r")
    assert isinstance(act, A.Route) and act.instance_id == "i0"  # overloads the least-loaded instance
    assert isinstance(pol.route(st, "big", 100.0, "r2"), type(None))  # no instance, no 4 free GPUs: wait


def test_scale_up_packs_small_models_so_a_whole_block_stays_free():
    pol, st = _policy(prewarm=False)
    _add(st, "i1", "a", [1], in_flight=32)
    for k in range(3):  # each new instance goes next to the busy GPU 1, never into the free block 4-7
        act = pol.route(st, "a", 100.0, f"r{k}")
        assert isinstance(act, A.StartInstance) and act.gpus[0] in (0, 2, 3)
        instant_driver(pol, st).apply(act, 100.0)
        st.instances[act.instance_id].in_flight = 32
    act = pol.route(st, "big", 100.0, "r")
    assert isinstance(act, A.StartInstance) and act.gpus == (4, 5, 6, 7)


@pytest.mark.parametrize("n_servers", [1, 2])
def test_shared_uses_every_gpu_and_splits_kv_memory_by_demand(n_servers):
    models = ([ModelInfo(n, 13_500_000_000, 1, 524_288) for n in "abcd"]
              + [ModelInfo("big", 138_000_000_000, 4, 327_680)])
    st = ClusterState.uniform(n_servers, models, gpu_bytes=72 << 30)
    hist = {m.name: ([0.0], [1.0], [float(p)]) for m, p in zip(models, [40, 10, 5, 5, 20])}
    pol = make_policy("shared", models=models, history=hist)
    acts = pol.tick(st, 86400.0)
    used = {g for a in acts for g in a.gpus}
    assert used == set(range(8 * n_servers))
    assert {a.model for a in acts} == {m.name for m in models}
    by_gpu: dict[int, list] = {}
    for a in acts:
        for g in a.gpus:
            by_gpu.setdefault(g, []).append(a)
    for g, acts_g in by_gpu.items():  # the KV shares of a GPU's models add up to what the weights leave
        kv = sum(a.kv_fraction * (72 * 2**30 - st.models[a.model].shard_bytes) for a in acts_g)
        weights = sum(st.models[a.model].shard_bytes for a in acts_g)
        assert kv + weights == pytest.approx(72 * 2**30, rel=1e-6)
    a_share = [a.kv_fraction for a in acts if a.model == "a" and len(by_gpu[a.gpus[0]]) > 1]
    other = [a.kv_fraction for a in acts if a.model in "cd" and len(by_gpu[a.gpus[0]]) > 1]
    if a_share and other:
        assert min(a_share) > min(other)  # the popular model gets the bigger share where colocated
