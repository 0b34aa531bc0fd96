"""The prewarm plan's replica scores (``policy.planner``) against hand-computed values, a single replica
included."""

import dataclasses
import math

import pytest

from warmserve.policy.planner import Candidate, plan_model, replica_scores


def test_a_single_replica_gets_the_full_cold_start_score():
    """One foundation replica scores c_m (exp(0) x 2 s); one burst replica alone c_m x peak / max(avg, 1) =
    2 x 3 / 1 = 6."""
    assert replica_scores(1, 0, 2.0, 1.0, 1.0) == [2.0]
    assert replica_scores(0, 1, 2.0, 0.5, 3.0) == [6.0]
    assert replica_scores(0, 0, 2.0, 1.0, 1.0) == []


def test_plan_model_for_one_instance_worth_of_load():
    """avg 3 and peak 3 with capacity 4 and nothing running: one foundation replica, rank 0, score c_m."""
    (c,) = plan_model("m", 3.0, 3.0, 0, 4, 2.0)
    assert (c.model, c.rank, c.burst) == ("m", 0, False) and c.score == pytest.approx(2.0)


def test_scores_fall_by_rank_and_a_burst_replica_is_weighted_by_burstiness():
    """Two foundation and one burst replica (n = 3), c_m 1, avg 2, peak 6: 1, e^(-1/3), 3 e^(-2/3)."""
    got = replica_scores(2, 1, 1.0, 2.0, 6.0)
    assert got == pytest.approx([1.0, math.exp(-1 / 3), 3.0 * math.exp(-2 / 3)])


def test_a_candidate_is_an_immutable_value():
    """Candidates are frozen: a plan hands them on and the placement may not change one."""
    c = Candidate("m", 0, False, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.score = 2.0
