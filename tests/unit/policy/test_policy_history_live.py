"""The history the forecasts read: history files finer than the window, a (re)start mid-window, models with no
request event yet."""

import math

import numpy as np
import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.history import History
from warmserve.policy.state import ClusterState, ModelInfo

P = 288
M = [ModelInfo("a", 10 << 30, 1, 1 << 19), ModelInfo("b", 10 << 30, 1, 1 << 19)]


def flat(windows, avg, peak):
    i = np.arange(windows)
    return i * 300.0, np.full(windows, avg), np.full(windows, peak)


def test_rows_finer_than_the_window_are_aggregated():
    """Found in review: a 60 s history under 300 s windows kept the last row of each window (2 where the window
    averaged 48.4 and peaked at 200)."""
    n = 3 * 1440
    minute = np.arange(n) % 5
    avg = np.where(minute == 4, 2.0, 60.0)  # busy 4 minutes of each 5, quiet in the 5th
    peak = np.where(minute == 2, 200.0, avg)  # the burst sits mid-window
    avg[7] = np.nan  # a missing row counts for nothing
    pol = make_policy("warmserve", models=M, history={"a": (np.arange(n) * 60.0, avg, peak)})
    h, r = pol._hist, pol._hist.index["a"]
    assert h.avg[r, 0] == pytest.approx(48.4) and h.peak[r, 0] == 200.0
    assert h.avg[r, 1] == pytest.approx((60 * 3 + 2) / 4) and h.peak[r, 1] == 200.0
    assert pol.forecast("a", n // 5) == pytest.approx((48.4, 200.0), rel=1e-3)


def test_windows_of_only_missing_rows_stay_missing():
    h = History(["a"], 300.0)
    h.load("a", [0.0, 60.0, 300.0, 360.0], [np.nan, np.nan, 1.0, 3.0], [np.nan, np.nan, 2.0, 5.0])
    assert math.isnan(h.avg[0, 0]) and math.isnan(h.peak[0, 0])
    assert (h.avg[0, 1], h.peak[0, 1]) == (2.0, 5.0) and h.known[0] == 1


def restart_at(offset_s, history):
    """A policy (re)started ``offset_s`` into window k, 64 requests in flight from then on; returns the policy
    after window k closed."""
    k = 3 * P + 100
    pol = make_policy("warmserve", models=M, config=PolicyConfig(prewarm=False), history=history)
    st = ClusterState.uniform(1, M)
    t = k * 300.0 + offset_s
    pol.tick(st, t)
    for _ in range(64):
        pol.on_request_start("a", t)
    pol.tick(st, (k + 1) * 300.0 + 1)
    return pol, k


def test_a_restart_mid_window_keeps_the_history_files_value():
    """Found in review: the first live window after a restart 4 minutes in was divided by the whole window (64 in
    flight booked as 12.8) and overwrote the history file's 64 for it: the next forecasts fell 40%."""
    k = 3 * P + 100
    pol, k = restart_at(240.0, {"a": flat(k + 1, 64.0, 96.0)})
    r = pol._hist.index["a"]
    assert pol._hist.avg[r, k] == pytest.approx(64.0) and pol._hist.peak[r, k] == 96.0
    assert pol.forecast("a", k + 1) == pytest.approx((64.0, 96.0))
    # the file's value stands for the minutes not seen, the live average for the rest
    pol, k = restart_at(240.0, {"a": flat(k + 1, 4.0, 6.0)})
    assert pol._hist.avg[r, k] == pytest.approx(4.0 * 0.8 + 64.0 * 0.2) and pol._hist.peak[r, k] == 64.0


def test_a_start_mid_window_with_no_history_averages_the_span_seen():
    pol, k = restart_at(240.0, None)
    r = pol._hist.index["a"]
    assert pol._hist.avg[r, k] == pytest.approx(64.0) and pol._hist.peak[r, k] == 64.0
    assert pol._hist.avg[pol._hist.index["b"], k] == 0.0
    # a start on a window's edge measures the whole window: nothing to merge
    pol, k = restart_at(0.0, {"a": flat(k + 1, 4.0, 6.0)})
    assert pol._hist.avg[r, k] == pytest.approx(64.0) and pol._hist.peak[r, k] == 64.0


def test_a_start_just_before_a_window_ends_keeps_the_historys_burst():
    """Found in CI (test_kv_stall_beside_prewarm): a history file up to the window before the current one, and a
    cluster started 5 s before the current window ended, idle while it came up: those 5 s stood for the whole
    window (0 in flight), and the next window's forecast peak fell from 64 to 32 (one prewarm planned, not two).
    The window's forecast now stands for the part not measured, as a history file's value does."""
    k = 3 * P + 100
    n = np.arange(k)
    pol = make_policy("warmserve", models=M, config=PolicyConfig(prewarm=False, forecaster="paper"),
                      history={"a": (n * 300.0, np.full(k, 1.0), np.full(k, 64.0))})
    st = ClusterState.uniform(1, M)
    pol.tick(st, k * 300.0 + 295.0)
    pol.tick(st, (k + 1) * 300.0 + 1.0)
    r = pol._hist.index["a"]
    assert pol._hist.avg[r, k] == pytest.approx(1.0 * (1 - 5 / 300)) and pol._hist.peak[r, k] == 64.0
    assert pol.forecast("a", k + 1)[1] == pytest.approx(64.0)
    # the model "b", with no history and so no forecast: the span seen stands for the window, as before
    assert pol._hist.avg[pol._hist.index["b"], k] == 0.0


@pytest.mark.parametrize("tick_first", [True, False])
def test_models_with_no_request_event_record_idle_windows(tick_first):
    """Found in review: with request events (exact windows), a model that had no event since the start had no
    meter, so its idle windows were recorded as missing, not 0, and its forecast kept yesterday's level."""
    pol = make_policy("warmserve", models=M, config=PolicyConfig(prewarm=False),
                      history={"a": flat(3 * P, 100.0, 150.0)})
    st = ClusterState.uniform(1, M)
    t0 = 3 * P * 300.0
    if tick_first:
        pol.tick(st, t0)
    pol.on_request_start("b", t0 + 0.5)  # only b gets traffic today
    for k in range(1, 13):
        pol.tick(st, t0 + k * 300.0 + 1)
    h, w = pol._hist, 3 * P + 12
    assert (h.avg[h.index["a"], w - 10: w] == 0.0).all() and (h.peak[h.index["a"], w - 10: w] == 0.0).all()
    assert pol.forecast("a", w)[0] < 1.0
