"""``last_instance_hold_s``: a quiet model's last instance stops for a model that wants GPUs only once its load has
been 0 that long (bench/simulate/issue11/last_instance_hold.*: at burst CV 4 a light model's next request came
seconds after the stop and waited for GPUs the bursting model held)."""

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30
SMALL_BYTES = 13_500_000_000  # a 13B-like model on one GPU


def _cluster(hold_s: float | None, b_requests: int, waiting: str = "", **cfg):
    """Two GPUs: `a` on GPU 0 served one request from 0 s to 3 s; `b` on GPU 1 with ``b_requests`` in flight
    (over B = 32: it wants the other GPU); each model named in ``waiting`` has 3 requests and no instance. Returns
    the driver and the state. ``hold_s`` None: PolicyConfig's default."""
    models = [ModelInfo(n, SMALL_BYTES, 1, 524_288) for n in "ab" + waiting]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models,
                      config=PolicyConfig(prewarm=False, replan_s=1e9, window_s=1e6, **cfg,
                                          **({} if hold_s is None else {"last_instance_hold_s": hold_s})))
    d = instant_driver(pol, st)
    d.apply(A.StartInstance("a1", "a", (0,)), 0.0)
    d.apply(A.StartInstance("b1", "b", (1,)), 0.0)
    d.submit("a", "a0", 0.0)
    for k in range(b_requests):
        d.submit("b", f"b{k}", 0.0)
    for m in waiting:
        for k in range(3):
            d.submit(m, f"{m}{k}", 0.0)
    return d, st


def _stopped_at(d, st, until_s: float) -> float | None:
    """Tick every second from 1 s; `a`'s request ends at 3 s. When a1 stopped (or began draining), or None."""
    for t in range(1, int(until_s) + 1):
        if t == 3:
            d.request_finished("a", "a1", float(t))
        d.tick(float(t))
        if "a1" not in st.instances or st.instances["a1"].draining:
            return float(t)
    return None


def test_without_a_hold_the_last_instance_stops_once_its_averaged_load_is_zero():
    d, st = _cluster(0.0, 40)
    stopped = _stopped_at(d, st, 40)
    assert stopped is not None and stopped <= 10  # 3 s + the 5 s load window, give or take a tick
    assert any(i.model == "b" and i.gpus == (0,) for i in st.instances.values())  # `b` took its GPU


def test_a_hold_keeps_the_last_instance_for_that_long_after_its_load_went_to_zero():
    unheld = _stopped_at(*_cluster(0.0, 40), 40)
    d, st = _cluster(10.0, 40)
    held = _stopped_at(d, st, 60)
    assert held is not None and unheld + 9 <= held <= unheld + 11
    assert any(i.model == "b" and i.gpus == (0,) for i in st.instances.values())


def test_the_hold_does_not_keep_a_last_instance_nobody_wants_under_idle_to_zero():
    """idle_to_zero is the §5 rule as written (stop once idle, GPUs wanted or not): the hold leaves it alone."""
    unheld = _stopped_at(*_cluster(0.0, 0, idle_to_zero=True), 40)
    held = _stopped_at(*_cluster(30.0, 0, idle_to_zero=True), 40)
    assert unheld is not None and held == unheld


def test_without_a_model_wanting_gpus_the_last_instance_stays_either_way():
    assert _stopped_at(*_cluster(10.0, 0), 40) is None


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_a_negative_or_nan_hold_is_refused(bad):
    with pytest.raises(InvalidArgumentError, match="last_instance_hold_s"):
        PolicyConfig(last_instance_hold_s=bad)


def test_no_hold_while_models_with_demand_outnumber_the_gpus():
    """Found on ServeGen (16 models on 16 GPUs, a workload the hold was not chosen on): over-subscribed, a held GPU
    is one a model with requests has none of, and the hold doubled P99 (issue11/last_instance_hold_servegen.txt).
    With `b`, `c` and `d` wanting GPUs on 2 GPUs, `a`'s last instance stops when it would with no hold."""
    d, st = _cluster(10.0, 40, "cd")
    assert _stopped_at(d, st, 60) == _stopped_at(*_cluster(0.0, 40, "cd"), 60)
    assert d.policy._co.oversubscribed
    assert {i.model for i in st.instances.values() if i.gpus == (0,)} == {"c", "d"}  # co-served on a's GPU


def test_no_hold_while_a_model_starves_though_the_gpus_match_the_models_with_demand():
    """`c` has requests waiting, no instance and no GPU (2 GPUs for `b` and `c`: not over-subscribed): `a`'s held
    instance stops when it would with no hold, and `c` gets its GPU (before: `c` waited the hold out). Found in
    review on the over-subscribed replay's twin (6 models on 3 CPU workers): four requests of such a model waited
    8.4 s, P99 8.88 s against 1.27 s with no hold. `b`, which bursts with an instance, never starves: for it the hold
    stands (test_a_hold_keeps_the_last_instance_for_that_long_after_its_load_went_to_zero)."""
    d, st = _cluster(10.0, 40, "c")
    assert not d.policy._co.oversubscribed
    assert _stopped_at(d, st, 60) == _stopped_at(*_cluster(0.0, 40, "c"), 60)
    assert any(i.model == "c" and i.gpus == (0,) for i in st.instances.values())


def test_warmserve_holds_ten_seconds_by_default_and_the_registered_autoscale_none():
    """The default chosen on six seeds (PolicyConfig's comment); `autoscale` stays the paper's reactive baseline,
    its keep-alives are scale_in_hold_s. The default hold shows in the stop time, not only in the field."""
    models = [ModelInfo("a", SMALL_BYTES, 1, 524_288)]
    assert make_policy("warmserve", models=models).cfg.last_instance_hold_s == 10.0
    assert make_policy("autoscale", models=models).cfg.last_instance_hold_s == 0.0
    unheld = _stopped_at(*_cluster(0.0, 40), 40)
    held = _stopped_at(*_cluster(None, 40), 60)
    assert held is not None and unheld + 9 <= held <= unheld + 11
