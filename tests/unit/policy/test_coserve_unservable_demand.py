"""Co-serving engages only while the models with demand need more GPUs than are live (``CoServing.update``); a
model no server can hold (``ClusterState.unservable``: a tp-4 model on 2-GPU servers, as while its 4-GPU server is
lost) needs no GPU count at all. Found in review: its forecast demand counted its 4 GPUs, so two light 7B models on
a 2-GPU server were co-served on one GPU with a fifth of its KV cache each, the other GPU idle for good. All
through the real driver (instant executor)."""

import numpy as np

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30
DAYS = 2
WINDOW_S = 300.0


def _7b(name):
    """Llama-2 7B as the policy knows it: 13.5 GB, tp 1, 0.5 MiB of KV per token, 35 ms prefill, 15 ms step."""
    return ModelInfo(name, 13_500_000_000, 1, 524_288, 0.035, 0.015)


def _run(with_unservable: bool):
    """Two 7B models on one 2-GPU server (72 GiB each), a request of each every second, each ending 2 s later;
    where asked, a tp-4 model `d` listed too, with two days of history at 10 in flight (its forecast: 10) and no
    request now. Returns the state and the policy after 60 s."""
    models = [_7b("a"), _7b("b")] + ([ModelInfo("d", 138 * 10**9, 4, 327_680)] if with_unservable else [])
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=72 * GiB)
    n = DAYS * round(86400 / WINDOW_S)
    history = {"d": (np.arange(n) * WINDOW_S, np.full(n, 10.0), np.full(n, 12.0))} if with_unservable else {}
    pol = make_policy("warmserve", models=models, config=PolicyConfig(window_s=WINDOW_S), history=history)
    d = instant_driver(pol, st)
    t0 = n * WINDOW_S
    d.tick(t0)
    for k in range(1, 61):
        t = t0 + k
        for iid, sent in list(d.executor.running.items()):
            while len(sent) > 2:  # the oldest ended: two seconds of requests stay in flight
                d.request_finished(sent.pop(0)[0], iid, t - 0.6)
        for m in "ab":
            d.submit(m, f"{m}{k}", t - 0.5)
        d.tick(t)
    return st, pol


def test_an_unservable_models_forecast_does_not_make_the_cluster_oversubscribed():
    st, pol = _run(with_unservable=True)
    assert "d" in st.unservable()
    # as without `d`: each light model on a GPU of its own, with the whole KV cache there (before: both on GPU 0
    # with 91 blocks each)
    _, alone = _run(with_unservable=False)
    layout = sorted((i.model, i.gpus, i.kv_blocks_total) for i in st.instances.values())
    assert layout == [("a", (0,), 475), ("b", (1,), 475)]
    assert not pol._co.oversubscribed
    assert not pol._co.ids and not alone._co.ids
    assert st.busy_gpus() == {0, 1}
