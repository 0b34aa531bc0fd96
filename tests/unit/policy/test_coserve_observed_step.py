"""Measured decode steps in co-serving's rule (``Policy.observe_decode_step``, ``cosizing.HostSizing.step_s``): the
live controller hands the policy the steps its engines measured, and a model's step is taken as no less than the
measured one. Without observations the step is the prediction exactly (the simulator's path); with them a pair the
prediction admits onto one host is not admitted, and a host running such a pair splits. Observations older than
OBSERVED_STEP_MAX_AGE_S are dropped at the next tick."""

import math

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.cosizing import OBSERVED_STEP_MAX_AGE_S, HostSizing
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def _sizing() -> HostSizing:
    # round figures: a 10 GB shard over 1 TB/s is 10 ms, below the profiled 20 ms step; one sequence of 1000 tokens
    # of 500 kB each over 1 TB/s adds 0.5 ms
    cfg = PolicyConfig(decode_read_bytes_per_s=1e12, coserve_context_tokens=1000)
    return HostSizing(cfg, {"a": ModelInfo("a", 10 * 10**9, 1, 500_000, decode_s_per_token=0.02)})


def test_without_observations_the_step_is_the_prediction_exactly():
    hs = _sizing()
    assert hs.step_s("a", 4) == max(0.02, 10 * 10**9 / 1 / 1e12) + 4 * 1000 * 500_000 / 1 / 1e12
    assert hs.step_s("a", 4) == pytest.approx(0.022)


def test_a_measured_step_raises_the_step_by_its_base_plus_the_batch_term():
    hs = _sizing()
    hs.observe("a", 0.05, 10, now_s=0.0)  # base: 50 ms less 10 x 0.5 ms = 45 ms
    assert hs.step_s("a", 4) == pytest.approx(0.047)  # 45 ms + 4 x 0.5 ms, above the predicted 22 ms
    assert hs.step_s("a", 0) == pytest.approx(0.045)
    hs.observe("a", 0.021, 10, now_s=1.0)  # the latest replaces it: base 16 ms, below the prediction
    assert hs.step_s("a", 4) == pytest.approx(0.022)  # never below the prediction


def test_an_observation_older_than_the_bound_is_forgotten():
    hs = _sizing()
    hs.observe("a", 0.05, 10, now_s=100.0)
    hs.forget_stale(100.0 + OBSERVED_STEP_MAX_AGE_S)
    assert hs.step_s("a", 4) == pytest.approx(0.047)  # at the bound: still used
    hs.forget_stale(100.0 + OBSERVED_STEP_MAX_AGE_S + 1)
    assert hs.step_s("a", 4) == pytest.approx(0.022)


def test_the_policy_takes_only_finite_positive_steps_of_models_it_serves():
    models = [ModelInfo("a", 10 * GiB, 1, 1 << 19)]
    pol = make_policy("warmserve", models=models, config=PolicyConfig())
    for step_s, batch in ((math.nan, 1.0), (0.0, 1.0), (-1.0, 1.0), (math.inf, 1.0), (0.1, math.nan)):
        pol.observe_decode_step("a", step_s, batch, 0.0)
    pol.observe_decode_step("zzz", 0.1, 1.0, 0.0)
    assert pol._co.observed == {}
    pol.observe_decode_step("a", 0.1, 2.0, 5.0)
    assert [(o.step_s, o.batch, o.at_s) for o in pol._co.observed.values()] == [(0.1, 2.0, 5.0)]
    off = make_policy("warmserve", models=models, config=PolicyConfig(coserve_tpot_s=0))
    off.observe_decode_step("a", 0.1, 2.0, 5.0)  # co-serving off: nothing reads it, nothing fails


def _cluster(placed, n_gpus=8):
    """Models a, b with the live controller's default profile (20 ms steps): a pair's predicted round is about
    40 ms, within the 100 ms target; ``placed``: (instance id, model, gpus) running co-served at t = 0."""
    models = [ModelInfo(n, 10 * GiB, 1, 1 << 19) for n in "ab"]
    st = ClusterState.uniform(1, models, gpus_per_server=n_gpus, gpu_bytes=80 * GiB)
    pol = make_policy("warmserve", models=models,
                      config=PolicyConfig(replan_s=1e9, window_s=1e6, coserve_always=True, coserve_tpot_s=0.1))
    d = instant_driver(pol, st)
    for iid, m, g in placed:
        d.apply(A.StartInstance(iid, m, g, kv_fraction=pol._co.kv_fraction(m, 80 * GiB)), 0.0)
        d.instance_ready(iid, 0.0)
        pol._co.ids.add(iid)
    pol._plan_window = 0
    return d, st, pol


def _live(st, m):
    return [i for i in st.instances.values() if i.model == m and not i.draining]


@pytest.mark.parametrize("measured_s", [None, 0.09])
def test_a_host_whose_measured_round_is_over_the_target_splits(measured_s):
    d, st, pol = _cluster([("a1", "a", (0,)), ("b1", "b", (0,))])
    d.submit("a", "a0", 10.0)
    d.submit("b", "b0", 10.0)
    for t in range(11, 14):
        if measured_s is not None:  # a's engine measures 90 ms steps: 90 + 20 ms > the 100 ms target
            pol.observe_decode_step("a", measured_s, 1.0, float(t))
        d.tick(float(t))
    dedicated = [i.gpus for i in _live(st, "a") if i.instance_id not in pol._co.ids]
    if measured_s is None:  # predicted: 2 x 20 ms, within the target: they stay together
        assert pol._co.splitting == set() and dedicated == []
    else:
        assert len(dedicated) == 1 and dedicated[0] != (0,)  # was kept on the host: the prediction fits


@pytest.mark.parametrize("measured_s", [None, 0.05])
def test_a_model_does_not_join_a_host_whose_measured_round_with_it_is_over_the_target(measured_s):
    d, st, pol = _cluster([("a1", "a", (0,))])
    d.submit("a", "a0", 1.0)
    for t in range(2, 5):
        if measured_s is not None:  # 50 + 20 ms > the join target, 100 ms x 0.5 / 0.8 = 62.5 ms
            pol.observe_decode_step("a", measured_s, 1.0, float(t))
        d.tick(float(t))
    d.submit("b", "b0", 5.0)
    for t in range(5, 8):
        d.tick(float(t))
    (b,) = _live(st, "b")
    if measured_s is None:
        assert b.gpus == (0,)  # predicted round 40 ms: b joins a's host
    else:
        assert b.gpus != (0,)  # was (0,): the prediction admitted it


def test_a_stale_observation_no_longer_holds_a_model_off_a_host():
    d, st, pol = _cluster([("a1", "a", (0,))])
    d.submit("a", "a0", 1.0)
    pol.observe_decode_step("a", 0.05, 1.0, 1.0)
    d.tick(2.0)
    assert "a" in pol._co.observed
    d.tick(2.0 + OBSERVED_STEP_MAX_AGE_S)  # a's engines measured nothing since
    assert pol._co.observed == {}
    d.submit("b", "b0", 3.0 + OBSERVED_STEP_MAX_AGE_S)
    assert [i.gpus for i in _live(st, "b")] == [(0,)]
