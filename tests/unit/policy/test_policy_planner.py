import math

import numpy as np

import pytest

from warmserve.policy.planner import plan_model, replica_counts, replica_scores


def test_counts_hand_computed():
    # avg 70 -> ceil(70/32)=3 instances, peak 150 -> 5; one running: n_f = 2, n_b = 5 - 1 - 2 = 2
    assert replica_counts(70, 150, 1, 32) == (2, 2)
    assert replica_counts(70, 150, 4, 32) == (0, 1)
    assert replica_counts(70, 150, 6, 32) == (0, 0)
    assert replica_counts(0, 0, 0, 32) == (0, 0)
    assert replica_counts(32, 32, 0, 32) == (1, 0)  # exactly one instance's worth


def test_scores_hand_computed():
    c = 13e9 / 32e9
    s = replica_scores(2, 2, c, 70, 150)
    n = 4
    want = [c, math.exp(-1 / n) * c, math.exp(-2 / n) * c * 150 / 70, math.exp(-3 / n) * c * 150 / 70]
    assert s == pytest.approx(want)
    assert replica_scores(0, 0, c, 1, 1) == []


def test_bigger_and_burstier_models_rank_first():
    small = plan_model("s", 40, 60, 0, 32, 0.42)
    big = plan_model("b", 40, 60, 0, 32, 1.08)
    bursty = plan_model("x", 40, 200, 0, 32, 0.42)
    assert big[0].score > small[0].score
    assert max(c.score for c in bursty if c.burst) > max(c.score for c in small)
    assert [c.rank for c in big] == list(range(len(big)))


def test_candidates_stop_at_the_copies_the_cluster_could_place():
    """Found in review: a forecast of 1e7 in flight (a history file in the wrong unit) asked for 312k candidates,
    placed one by one: a 9 s tick. Capped, the first ones keep the scores they have uncapped."""
    whole = plan_model("m", 300, 600, 0, 32, 1.0)
    capped = plan_model("m", 300, 600, 0, 32, 1.0, max_replicas=4)
    assert capped == whole[:4] and len(whole) == 19
    assert len(plan_model("m", 1e7, 1e7, 0, 32, 1.0, max_replicas=8)) == 8
    with pytest.raises(ValueError, match="not finite"):
        plan_model("m", math.inf, math.inf, 0, 32, 1.0)


def test_a_tick_with_a_huge_forecast_plans_no_more_than_the_gpus():
    from warmserve.policy import actions as A
    from warmserve.policy import make_policy
    from warmserve.policy.state import ClusterState, ModelInfo

    models = [ModelInfo("m", 10 << 30, 1, 1 << 19)]
    n = 2 * 288
    hist = {"m": (np.arange(n) * 300.0, np.full(n, 1e7), np.full(n, 1e7))}
    pol = make_policy("warmserve", models=models, history=hist)
    out = pol.tick(ClusterState.uniform(1, models), n * 300.0 + 1)
    assert 0 < sum(isinstance(a, A.Prewarm) for a in out) <= 8  # one server of 8 GPUs
