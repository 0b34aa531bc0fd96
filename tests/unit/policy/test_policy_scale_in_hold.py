"""``scale_in_hold_s``: a model scales in no lower than the instances it wanted over the last hold seconds (its
averaged load or its prefill backlog of the moment), while no other model wants GPUs. Measured
(bench/simulate/issue11/scale_in_hold.json): at burst CV 4 the prompts that miss the SLO are queued behind a burst's
prefills on the one instance a model kept after the last burst."""

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _models():
    kw = dict(kv_bytes_per_token=512 << 10, prefill_s=0.035, decode_s_per_token=0.015)
    return [ModelInfo("a", 13 * GiB, 1, **kw), ModelInfo("b", 13 * GiB, 1, **kw)]


def _burst(hold_s: float, n_gpus: int = 4):
    """a bursts at 10 s (a backlog of long prompts: several instances), every request done by 12 s."""
    models = _models()
    st = ClusterState.uniform(1, models, gpus_per_server=n_gpus, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models,
                      config=PolicyConfig(scale_in_hold_s=hold_s, prewarm=False, coserve_tpot_s=0.0,
                                          colocate_when_oversubscribed=False))
    d = instant_driver(pol, st)
    for t in range(0, 10):
        d.tick(float(t))
    for k in range(24):
        d.submit("a", f"r{k}", 10.0, prompt_tokens=4096)
    for t in (10.0, 11.0):
        d.tick(t)
        d.route_all(t)
    finish_all(d, "a", 12.0)
    return d, st


def finish_all(d, model: str, now_s: float) -> None:
    """Every request the instant executor holds ends at ``now_s`` (also used by test_policy_scale_in_window)."""
    for iid, reqs in d.executor.running.items():
        for r in reqs:
            d.request_finished(model, iid, now_s, request=r)
        reqs.clear()


def serving(st, model="a"):
    return sum(1 for i in st.instances.values() if i.model == model and i.ready and not i.draining)


def _tick(d, start: int, end: int) -> None:
    for t in range(start, end):
        d.tick(float(t))


@pytest.mark.parametrize("hold_s", [0.0, 30.0])
def test_a_hold_keeps_a_burst_s_instances_for_its_length_then_lets_them_go(hold_s):
    d, st = _burst(hold_s)
    peak = serving(st)
    assert peak >= 3
    _tick(d, 12, 36)
    assert serving(st) == (peak if hold_s else 1)  # 25 s after the burst: held, or scaled in on the averages
    _tick(d, 36, 50)
    assert serving(st) == 1  # past the hold: scaled in as without it


def test_the_hold_yields_when_another_model_wants_the_gpus():
    """Every GPU is held by a's burst instances; b's requests arrive with no instance and no free GPU: a scales
    in on its averages, as without the hold (not only the one GPU b takes back), and b gets a GPU."""
    d, st = _burst(300.0)
    assert serving(st) == 4
    _tick(d, 12, 20)
    assert serving(st) == 4
    d.submit("b", "q0", 20.0, prompt_tokens=100)
    for t in range(20, 30):
        d.tick(float(t))
        d.route_all(float(t))
    assert serving(st) <= 1 and serving(st, "b") == 1  # a quiet model's last instance may go too (§5)


def test_a_negative_hold_is_refused_with_its_name():
    with pytest.raises(InvalidArgumentError, match="scale_in_hold_s must be >= 0"):
        PolicyConfig(scale_in_hold_s=-1.0)
