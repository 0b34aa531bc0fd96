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


def test_a_forecast_that_is_not_finite_is_refused():
    with pytest.raises(ValueError, match="not finite"):
        plan_model("m", math.inf, math.inf, 0, 32, 1.0)


def test_a_huge_forecast_tries_a_placement_once_per_change_of_the_board(monkeypatch):
    """Found in review: a forecast of 1e7 in flight (a history in the wrong unit) tried its 312k candidates one by
    one, a 9 s tick. A model's placement that failed is not tried again on an unchanged board (it would fail: the
    scores only fall); every candidate still draws its id, so plans are as before."""
    from warmserve.policy import actions as A
    from warmserve.policy import make_policy
    from warmserve.policy.placement import Board
    from warmserve.policy.state import ClusterState, ModelInfo

    calls = []
    real = Board.place
    monkeypatch.setattr(Board, "place", lambda self, *a, **k: calls.append(a[1]) or real(self, *a, **k))
    models = [ModelInfo("m", 10 << 30, 1, 1 << 19)]
    n = 2 * 288
    hist = {"m": (np.arange(n) * 300.0, np.full(n, 1e6), np.full(n, 1e6))}
    pol = make_policy("warmserve", models=models, history=hist)
    out = pol.tick(ClusterState.uniform(1, models), n * 300.0 + 1)
    placed = sum(isinstance(a, A.Prewarm) for a in out)
    assert placed == 8  # one server of 8 GPUs, one copy on each
    assert len(calls) == placed + 1  # the ninth fails, and the other 31,241 are not tried
    assert pol._n >= 1e6 / 32  # each drew its id
