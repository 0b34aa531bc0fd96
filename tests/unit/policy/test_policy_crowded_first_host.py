"""A fresh cluster whose served models need more GPUs than it has and that no static layout holds all at once
(``CoServing.layout_refused_gpus``): a model's first instance opens a co-serving host, so the next model joins it
at once instead of waiting for the first to scale in. Found live: six demo models (llama-20m, 74 MB of float32 weights)
on one CPU worker of 500 MiB ran one or two at a time, each switch 5 s and, once all had been idle, 30 s (the
first instance was dedicated, which no model joins). Sizes here are that demo's, as the controller sees them."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

MiB = 1 << 20
SHARD_BYTES = 77_594_624  # llama-20m in float32, as its ModelInfo reads it live
KV_BYTES_PER_TOKEN = 8192  # 8 layers x 2 KV heads x 64 x (K and V) x 4 bytes


def _cluster(n_models: int, pool_bytes: int, n_gpus: int = 1):
    models = [ModelInfo(f"m{i}", SHARD_BYTES, 1, KV_BYTES_PER_TOKEN, 0.01, 0.005, max_context_tokens=2048)
              for i in range(n_models)]
    st = ClusterState.uniform(1, models, gpus_per_server=n_gpus, gpu_bytes=pool_bytes)
    pol = make_policy("warmserve", models=models, config=PolicyConfig())
    return st, pol, instant_driver(pol, st)


def _serve_one(st, d, model: str, request, now_s: float) -> float:
    """Submit one request of ``model`` at ``now_s``, tick every 0.5 s until it is routed, answer it; the wait."""
    d.submit(model, request, now_s)
    t = now_s
    while st.queued(model):
        t += 0.5
        assert t - now_s < 120, f"{model}'s request waited 120 s"
        d.tick(t)
    inst = next(i for i in st.instances.values() if i.model == model and i.in_flight)
    d.request_finished(model, inst.instance_id, t)
    return t - now_s


def test_the_first_instance_opens_a_host_and_the_next_model_joins_it_at_once():
    st, pol, d = _cluster(6, 500 * MiB)
    d.tick(0.0)
    assert pol._co.layout_refused_gpus == 1  # six 74 MB shards are over 80% of 500 MiB: no layout holds them all
    d.submit("m0", "a", 0.1)
    (m0,) = st.instances.values()
    assert m0.instance_id in pol._co.ids and m0.kv_blocks_total < (500 * MiB - SHARD_BYTES) // (2 * MiB) - 1
    d.submit("m1", "b", 0.2)  # no tick between: route() starts it beside m0
    assert not st.queued("m1")
    assert sorted((i.model, i.gpus) for i in st.instances.values()) == [("m0", (0,)), ("m1", (0,))]


def test_round_robin_over_more_models_than_a_host_holds_never_waits_for_time_sharing():
    """Two rounds of one request per model in turn, each answered before the next: a host holds two of them here
    (one shard and a KV share of 16 requests of 1024 tokens each, 211 MB, twice in 500 MiB), so every other
    request waits for an idle model to scale in (min_lifetime_s, 5 s); none waits for time-sharing
    (preempt_after_s, 30 s), and every second one is routed at once."""
    st, pol, d = _cluster(6, 500 * MiB)
    d.tick(0.0)
    t, waits = 0.1, []
    for rnd in range(2):
        for i in range(6):
            w = _serve_one(st, d, f"m{i}", (rnd, i), t)
            waits.append(w)
            t += w + 0.1
    assert max(waits) < 6.0, waits  # min_lifetime_s and a tick, far from preempt_after_s
    assert sum(w <= 1.0 for w in waits) >= 6, waits


def test_a_cluster_whose_models_fit_is_not_crowded():
    """Two models on the same pool: laid out together at the first tick (the colocation), not crowded; one model
    per GPU: nothing is laid out and each first instance is dedicated, as the paper's policy starts them."""
    st, pol, d = _cluster(2, 500 * MiB)
    d.tick(0.0)
    assert not pol._co.layout_refused_gpus and len(st.instances) == 2
    st, pol, d = _cluster(2, 500 * MiB, n_gpus=2)
    d.tick(0.0)
    assert not pol._co.layout_refused_gpus
    d.submit("m0", "a", 0.1)
    (m0,) = st.instances.values()
    assert m0.instance_id not in pol._co.ids
