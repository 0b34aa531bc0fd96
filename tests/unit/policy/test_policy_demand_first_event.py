"""Request events that come before the policy's first tick: the window they start in is measured from the policy's
first input only (as a tick's meter measures it), and a forecaster's failing fit names its model."""

import logging

import numpy as np
import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.state import ClusterState, ModelInfo

P = 288
M = [ModelInfo("a", 10 << 30, 1, 1 << 19), ModelInfo("b", 10 << 30, 1, 1 << 19)]
K = 3 * P + 100  # the window the policy starts in


def flat(windows, avg, peak):
    return np.arange(windows) * 300.0, np.full(windows, avg), np.full(windows, peak)


def events_first(history, offset_s=240.0):
    """A policy whose first input is 64 request starts of "a", ``offset_s`` into window K, with no tick before;
    returns it after a tick closed window K."""
    pol = make_policy("warmserve", models=M, config=PolicyConfig(prewarm=False), history=history)
    t = K * 300.0 + offset_s
    for _ in range(64):
        pol.on_request_start("a", t)
    pol.tick(ClusterState.uniform(1, M), (K + 1) * 300.0 + 1)
    return pol


def test_events_before_the_first_tick_keep_the_history_files_value():
    """Found in review: the meter a first event made was a plain WindowMeter, so 64 in flight for the last minute
    of the window were booked as 12.8 and overwrote the history file's 64 for it (a tick's meter merges)."""
    pol = events_first({"a": flat(K + 1, 64.0, 96.0)})
    r = pol._hist.index["a"]
    assert pol._hist.avg[r, K] == pytest.approx(64.0) and pol._hist.peak[r, K] == 96.0
    pol = events_first({"a": flat(K + 1, 4.0, 6.0)})
    assert pol._hist.avg[r, K] == pytest.approx(4.0 * 0.8 + 64.0 * 0.2) and pol._hist.peak[r, K] == 64.0


def test_events_before_the_first_tick_with_no_history_average_the_span_seen():
    pol = events_first(None)
    h = pol._hist
    assert h.avg[h.index["a"], K] == pytest.approx(64.0) and h.peak[h.index["a"], K] == 64.0
    pol = events_first(None, offset_s=0.0)  # a start on the window's edge measures all of it
    assert h.avg[h.index["a"], K] == pytest.approx(64.0)


def test_a_models_first_event_is_measured_from_the_policys_first_input():
    """Events are exact: a model with no event since the policy's first input was idle from then, not unseen."""
    pol = make_policy("warmserve", models=M, config=PolicyConfig(prewarm=False))
    pol.on_request_start("b", K * 300.0 + 240.0)  # the first input: 60 s of window K are watched
    pol.on_request_start("a", (K + 1) * 300.0 + 100.0)
    pol.tick(ClusterState.uniform(1, M), (K + 2) * 300.0 + 1)
    h, r = pol._hist, pol._hist.index["a"]
    assert (h.avg[r, K], h.peak[r, K]) == (0.0, 0.0)
    assert h.avg[r, K + 1] == pytest.approx(200.0 / 300.0) and h.peak[r, K + 1] == 1


def test_the_simulators_order_a_tick_first_is_unchanged():
    """A tick before any event makes every meter: an event then finds its model's meter made at the tick."""
    pol = make_policy("warmserve", models=M, config=PolicyConfig(prewarm=False))
    st = ClusterState.uniform(1, M)
    pol.tick(st, K * 300.0 + 240.0)
    pol.on_request_start("a", K * 300.0 + 270.0)
    pol.tick(st, (K + 1) * 300.0 + 1)
    h, r = pol._hist, pol._hist.index["a"]
    assert h.avg[r, K] == pytest.approx(30.0 / 60.0) and h.peak[r, K] == 1


def test_a_failing_fit_names_its_model(caplog, monkeypatch):
    """The policy's forecasters carry their model's name into the one warning a failing fit logs. (An infinite
    history row, which made the fit fail here before, is refused when the history is loaded now.)"""
    from warmserve.policy import forecast as F

    def nan_fit(data, period):
        return (np.nan, 0.0, 0.0, np.zeros(period))  # what a degenerate series gave: non-finite parameters

    monkeypatch.setitem(F._FITS, "stl", nan_fit)
    p = 24
    y = 50 + 10 * np.sin(2 * np.pi * np.arange(5 * p) / p)
    pol = make_policy("warmserve", models=M, config=PolicyConfig(window_s=3600.0, forecaster="stl"),
                      history={"a": (np.arange(5 * p) * 3600.0, y, y)})
    with caplog.at_level(logging.WARNING, logger="warmserve.policy.forecast"):
        avg, peak = pol.forecast("a", 4 * p + 16)
    assert np.isfinite([avg, peak]).all()
    warned = [r.getMessage() for r in caplog.records if "fit failed" in r.getMessage()]
    assert warned and all("forecast of a:" in w for w in warned), warned
