"""A co-served model that outgrew its host and finds neither idle GPUs nor a host to convert gets one more
co-served instance on another host (``CoServing.replica``): a second instance of the model. Found in review: it
was started whatever ``PolicyConfig.max_instances_per_model`` said, so a model capped at one instance ran two
for as long as its load stayed up (the cap holds for every other start: scale-out, route(), the prewarm plan).
All through the real driver (instant executor)."""

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30
T0 = 1000.0


def _model(name, weight_bytes=13_500_000_000):
    """Llama-2 7B as the policy knows it (13.5 GB, 0.5 MiB of KV per token, 15 ms step), or another size."""
    return ModelInfo(name, weight_bytes, 1, 524_288, 0.035, 0.015)


@pytest.mark.parametrize("cap", [0, 1])
def test_a_replica_keeps_to_the_instance_cap(cap):
    # GPU 0: a beside b, whose 20 GB shard fits no other host (2 of its shards a host at most); GPU 1: c and d
    models = [_model("a"), _model("b", 20 * 10**9), _model("c"), _model("d")]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models,
                      config=PolicyConfig(replan_s=1e9, max_instances_per_model=cap))
    d = instant_driver(pol, st)
    for iid, m, g in (("a1", "a", (0,)), ("b1", "b", (0,)), ("c1", "c", (1,)), ("d1", "d", (1,))):
        d.apply(A.StartInstance(iid, m, g, kv_fraction=pol._co.kv_fraction(m, 72 * GiB)), T0 - 100)
        d.instance_ready(iid, T0 - 100)
        pol._co.ids.add(iid)
    # a's 24 in flight are more than its KV share on GPU 0 holds (22 requests), so it splits, and no GPU is
    # idle for a dedicated instance; the others have 1 each
    for m, n in (("a", 24), ("b", 1), ("c", 1), ("d", 1)):
        for k in range(n):
            d.submit(m, f"{m}#{k}", T0 - 10)
    for s in range(10):
        d.tick(T0 + s)
    a = sorted((i.instance_id, i.gpus) for i in st.instances.values() if i.model == "a" and not i.draining)
    if cap:
        assert a == [("a1", (0,))]  # was a second, co-served on GPU 1: two instances under a cap of one
        assert "a" in pol._co.splitting  # it still asks for a dedicated instance (a conversion, not one more)
    else:
        assert sorted(g for _, g in a) == [(0,), (1,)]  # a replica on c and d's host carries half of its batch
