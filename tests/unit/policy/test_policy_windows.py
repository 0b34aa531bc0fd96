"""Forecast windows inside the policy: history, live measurement, the reactive ablation."""

import math

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.state import ClusterState, ModelInfo

P = 288
M = [ModelInfo("a", 10 << 30, 1, 1 << 19), ModelInfo("b", 10 << 30, 1, 1 << 19)]


def seasonal(days):
    i = np.arange(days * P)
    avg = 50 + 40 * np.sin(2 * np.pi * i / P)
    return i * 300.0, avg, avg * 2


def test_history_gives_near_exact_forecasts_of_a_known_season():
    pol = make_policy("warmserve", models=M, history={"a": seasonal(3)})
    _, avg, peak = seasonal(4)
    fa, fp = pol.forecast("a", 3 * P)
    assert fa == pytest.approx(avg[3 * P], rel=1e-6) and fp == pytest.approx(peak[3 * P], rel=1e-6)
    assert all(math.isnan(x) for x in pol.forecast("b", 3 * P))  # a new model: no forecast, no prewarm


def test_bad_history_is_a_value_error():
    with pytest.raises(InvalidArgumentError):
        make_policy("warmserve", models=M, history={"a": ([0.0, 300.0], [1.0], [1.0, 2.0])})
    with pytest.raises(InvalidArgumentError):
        make_policy("warmserve", models=M, history={"a": ([-300.0], [1.0], [1.0])})
    with pytest.raises(KeyError):
        make_policy("warmserve", models=M, history={"zz": ([0.0], [1.0], [1.0])})


def test_request_events_make_exact_windows():
    pol = make_policy("warmserve", models=M, config=PolicyConfig(prewarm=False))
    st = ClusterState.uniform(1, M)
    pol.tick(st, 0.0)
    pol.on_request_start("a", 10.0)
    pol.on_request_start("a", 20.0)
    pol.on_request_done("a", 40.0)
    pol.on_request_done("a", 70.0)
    pol.tick(st, 301.0)  # closes window 0: 1 request for 10 s, 2 for 20 s, 1 for 30 s
    h = pol._hist
    r = h.index["a"]
    assert h.avg[r, 0] == pytest.approx((10 + 40 + 30) / 300) and h.peak[r, 0] == 2


def test_the_first_event_of_a_model_is_not_booked_from_its_windows_start():
    """Found in review: a model's first request made its meter as if it had been in flight since the window
    began, so a 0.5 s request at the end of window 0 recorded an average of 1.0 (the truth: 0.5 / 300)."""
    pol = make_policy("warmserve", models=M, config=PolicyConfig(prewarm=False))
    pol.tick(ClusterState.uniform(1, M), 0.0)  # watched from 0: an event-only start is test_policy_demand_first_event's
    pol.on_request_start("a", 299.0)
    pol.on_request_done("a", 299.5)
    pol.on_request_start("a", 301.0)  # closes window 0
    h = pol._hist
    r = h.index["a"]
    assert h.avg[r, 0] == pytest.approx(0.5 / 300) and h.peak[r, 0] == 1


def test_reactive_plans_from_the_last_window_and_warmserve_from_the_forecast():
    t, avg, peak = seasonal(2)
    avg2, peak2 = avg.copy(), peak.copy()
    avg2[-1], peak2[-1] = 1.0, 2.0  # the last window was nearly idle; the season says otherwise
    hist = {"a": (t, avg2, peak2), "b": (t, avg, peak)}
    react = make_policy("reactive", models=M, history=hist)
    warm = make_policy("warmserve", models=M, history=hist)
    assert react.forecast("a", 2 * P) == (1.0, 2.0)
    assert warm.forecast("a", 2 * P)[1] > 20
    st = ClusterState.uniform(1, M)
    n_react = sum(isinstance(a, A.Prewarm) and a.model == "a" for a in react.tick(st, 2 * P * 300.0))
    n_warm = sum(isinstance(a, A.Prewarm) and a.model == "a" for a in warm.tick(st, 2 * P * 300.0))
    assert n_react == 1 and n_warm > n_react
