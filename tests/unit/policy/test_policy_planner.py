import math

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
