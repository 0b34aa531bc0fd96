"""The static baselines (`dedicated`, `shared`) lay out once, at their first tick; a model whose every instance is
lost with its GPUs (a worker died; the live controller then adds the restarted worker's GPU) gets one again on
idle GPUs. Found in review: nothing was laid out after the first tick, so its requests waited for ever beside an
idle GPU. All through the real driver (instant executor)."""

from __future__ import annotations

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _7b(name):
    """Llama-2 7B as the policy knows it: 13.5 GB, tp 1, 0.5 MiB of KV per token, 35 ms prefill, 15 ms step."""
    return ModelInfo(name, 13_500_000_000, 1, 524_288, 0.035, 0.015)


def _after_loss(name: str, add_gpu: bool):
    """Two 7B models on one 2-GPU server (72 GiB each) laid out at 0 s; at 1 s every GPU holding an instance of
    `a` is lost, and where asked a GPU joins (the restarted worker's); a request of `a` each second after."""
    models = [_7b("a"), _7b("b")]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=72 * GiB)
    d = instant_driver(make_policy(name, models=models, config=PolicyConfig()), st)
    d.tick(0.0)
    before = {i.instance_id for i in st.instances.values()}
    d.lose_gpus(sorted({g for i in st.instances.values() if i.model == "a" for g in i.gpus}), 1.0)
    if add_gpu:
        d.add_gpus(0, [72 * GiB])
        d.route_all(1.0)
    for t in range(2, 6):
        d.submit("a", f"a{t}", t - 0.5)
        d.tick(float(t))
    return st, d, before


@pytest.mark.parametrize("name", ["dedicated", "shared"])
def test_a_model_lost_with_its_gpus_gets_an_instance_on_a_gpu_that_joins(name):
    st, d, _ = _after_loss(name, add_gpu=True)
    a = [i for i in st.instances.values() if i.model == "a"]
    assert [i.gpus for i in a] == [(2,)], a  # before: none, the joined GPU idle for good
    assert not st.queues["a"] and a[0].in_flight == 4  # every request of `a` routed


def test_models_that_kept_an_instance_are_left_as_laid_out():
    """`dedicated` loses `a`'s GPU and gets none back: `b` keeps its one instance, nothing else starts (no GPU is
    idle), and `a`'s requests wait as before."""
    st, d, before = _after_loss("dedicated", add_gpu=False)
    assert {i.instance_id for i in st.instances.values()} == before - {"a/i1"}
    assert st.queued("a") == 4
    assert not any(k == "start_instance" for k, _ in d.executor.log[len(before):])
