"""warmserve's first-tick colocation on an over-subscribed cluster that also lists a model no server can ever hold
(``ClusterState.unservable``): the colocation is laid out over the models that can be served, so a light model is
served at once beside another (found in review: the unservable model made ``plan_shared`` raise, the colocation
was refused for every model, and a light model's one request waited 122.6 s instead of 0). All through the real
driver (instant executor)."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _7b(name):
    """Llama-2 7B as the policy knows it: 13.5 GB, tp 1, 0.5 MiB of KV per token, 35 ms prefill, 15 ms step."""
    return ModelInfo(name, 13_500_000_000, 1, 524_288, 0.035, 0.015)


def _cluster(with_unservable: bool):
    """Three 7B models on one 2-GPU server (72 GiB each), and where asked a tp-4 model no server can hold."""
    models = [_7b("a"), _7b("b"), _7b("c")] + ([ModelInfo("d", 138 * 10**9, 4, 327680)] if with_unservable else [])
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig())
    return st, pol, instant_driver(pol, st)


def _layout(with_unservable: bool):
    st, pol, d = _cluster(with_unservable)
    d.tick(0.0)
    starts = sorted((i.model, tuple(i.gpus)) for i in st.instances.values())
    return st, pol, d, starts


def test_an_unservable_model_does_not_refuse_the_colocation_of_the_others():
    """With the tp-4 model listed: the same first-tick layout as without it (every servable model an instance, two
    sharing a GPU), none for the unservable model, and a light model's first request is routed at once."""
    st, pol, d, starts = _layout(with_unservable=True)
    assert "d" in st.unservable()
    _, _, _, without = _layout(with_unservable=False)
    assert starts == without
    assert sorted({m for m, _ in starts}) == ["a", "b", "c"]
    assert pol._colocated and pol._co.ids
    d.submit("c", "c0", 20.0)
    assert not st.queues["c"], "c's request waits in the driver's queue beside a colocation that holds c"


def test_an_unservable_model_does_not_call_for_a_colocation():
    """Two 7B models on two GPUs fit one each: the tp-4 model's GPUs count toward no need, so nothing is laid out
    and the rules start instances as requests come."""
    models = [_7b("a"), _7b("b"), ModelInfo("d", 138 * 10**9, 4, 327680)]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig())
    d = instant_driver(pol, st)
    d.tick(0.0)
    assert not st.instances and not pol._colocated
