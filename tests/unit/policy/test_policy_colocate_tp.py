"""``PolicyConfig.colocate_tp``: whether a tensor-parallel model may share its GPU group with other models. The live
workers run a tp shard alone (a shared activation of one is refused), so where it is off no layout, colocation or
co-serving host puts a tp > 1 instance beside another; tp-1 models still share. Found in review: `shared` and
warmserve laid out 13B tp-2 pairs on one group, which every live activation refused."""

import numpy as np
import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.colocation import UnplacedModelError, placement_order, plan_shared
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30
DAY = 86400.0


def _13b_tp2(name):
    """Llama-2 13B at tp 2 as the policy knows it: 26 GB (13 GB a GPU), 0.8 MB of KV per token, 60 ms prefill."""
    return ModelInfo(name, 26_000_000_000, 2, 819_200, 0.06, 0.02)


def _7b(name):
    return ModelInfo(name, 13_500_000_000, 1, 524_288, 0.035, 0.015)


def _layout(models, n_gpus, colocate_tp):
    st = ClusterState.uniform(1, models, gpus_per_server=n_gpus, gpu_bytes=72 * GiB)
    by_name = {m.name: m for m in models}
    demand = {m.name: 1.0 for m in models}
    return plan_shared(st, by_name, placement_order(by_name, demand), demand, colocate_tp=colocate_tp)


def test_without_colocate_tp_a_tp2_group_hosts_one_model_and_a_layout_that_needs_more_is_refused():
    tp2 = [_13b_tp2(f"t{k}") for k in range(3)]
    shared = _layout(tp2, 4, True)
    assert max(len(hosted) for _, hosted in shared) == 2  # with it on, two tp-2 models share a group
    with pytest.raises(UnplacedModelError, match="runs alone on its group") as e:
        _layout(tp2, 4, False)
    assert e.value.tp == 2 and e.value.groups == 2 and "2 more GPUs" in str(e.value)
    alone = _layout(tp2 + [_7b("a"), _7b("b")], 7, False)
    assert sorted(len(hosted) for g, hosted in alone if len(g) == 2) == [1, 1, 1]
    assert [len(hosted) for g, hosted in alone if len(g) == 1] == [2]  # the tp-1 models still share their GPU


def _shares(st) -> list[tuple[str, str]]:
    """Pairs of live instances on a common GPU where one is tensor-parallel."""
    out = []
    live = [i for i in st.instances.values() if not i.draining]
    for k, i in enumerate(live):
        for j in live[k + 1:]:
            if set(i.gpus) & set(j.gpus) and max(st.models[i.model].tp, st.models[j.model].tp) > 1:
                out.append((i.instance_id, j.instance_id))
    return out


@pytest.mark.parametrize("first_tick", [True, False], ids=["first-tick colocation", "rules only"])
@pytest.mark.parametrize("colocate_tp", [True, False])
def test_warmserve_over_subscribed_colocates_tp_models_only_where_allowed(colocate_tp, first_tick):
    """Two tp-2 13Bs and three 7Bs with steady demand on 6 GPUs (7 needed for one instance each), with every
    model's requests arriving: the first tick's colocation, or the co-serving rules alone (their guard is
    ``CoSizing.models_per_host``; found in review: the colocation alone left it untested). With colocate_tp a tp-2
    instance shares its group at some tick; without it none ever does, and the requests are still served (the
    7Bs share)."""
    models = [_13b_tp2("t0"), _13b_tp2("t1"), _7b("a"), _7b("b"), _7b("c")]
    names = [m.name for m in models]
    st = ClusterState.uniform(1, models, gpus_per_server=6, gpu_bytes=72 * GiB)
    t = np.arange(2 * 288)
    hist = {n: (t * 300.0, np.full(len(t), 1.0), np.full(len(t), 2.0)) for n in names}
    cfg = PolicyConfig(colocate_tp=colocate_tp, colocate_when_oversubscribed=first_tick)
    pol = make_policy("warmserve", models=models, config=cfg, history=hist)
    d = instant_driver(pol, st)
    t0 = 2 * DAY
    shared_ticks, running, served = 0, [], 0
    d.tick(t0)
    for s in range(1, 240):
        now = t0 + s
        for end, m, req in [r for r in running if r[0] <= now]:
            iid = next((i.instance_id for i in st.instances.values() if i.model == m and i.in_flight), None)
            if iid is not None:
                running.remove((end, m, req))
                d.request_finished(m, iid, now)
                served += 1
        for k, m in enumerate(names):
            if (s + 2 * k) % 8 == 0:
                d.submit(m, f"{m}{s}", now)
                running.append((now + 2.0, m, f"{m}{s}"))
        d.tick(now + 0.5)
        shared_ticks += bool(_shares(st))
    assert (shared_ticks > 0) == colocate_tp
    assert served >= 0.9 * 5 * 240 / 8


def test_shared_without_colocate_tp_names_the_tp_class_that_cannot_fit():
    models = [_13b_tp2("t0"), _13b_tp2("t1"), _13b_tp2("t2"), _7b("a")]
    st = ClusterState.uniform(1, models, gpus_per_server=5, gpu_bytes=72 * GiB)
    d = instant_driver(make_policy("shared", models=models, config=PolicyConfig(colocate_tp=False)), st)
    with pytest.raises(UnplacedModelError, match="tensor-parallel model runs alone"):
        d.tick(0.0)
