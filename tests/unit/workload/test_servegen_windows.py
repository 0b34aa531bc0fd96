"""ServeGen arrivals per 10-minute window (found in review): normalising n inter-arrival times put each window's
last request exactly on the window's end, so every series fired at once on each 600 s boundary, a window's last
request counted in the next window, and the one on a segment's end was lost; ``burst_cv`` re-drew the
inter-arrivals over a whole segment, flattening the published per-window rates."""

import numpy as np
import pytest

from warmserve.workload import servegen as sg
from warmserve.workload.recipes import SERVEGEN_LAST_DAY_S, servegen_workload

T0_S = 6000.0


def _series(is_gamma: bool, n_windows: int = 3, per_window: int = 3) -> sg.ClientWindows:
    k = n_windows
    return sg.ClientWindows("m-large", 1, T0_S + sg.WINDOW_S * np.arange(k), np.full(k, per_window / sg.WINDOW_S),
                            np.ones(k), np.full(k, is_gamma), np.full(k, 0.7), np.full(k, 2.0))


@pytest.mark.parametrize("is_gamma", [True, False])
def test_every_window_keeps_its_requests_strictly_inside_it(is_gamma):
    s = _series(is_gamma)
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = sg.sample_arrivals(s, T0_S, T0_S + 3 * sg.WINDOW_S, 1.0, rng)
        per_window = np.bincount(((t - T0_S) // sg.WINDOW_S).astype(int), minlength=3)
        assert per_window.tolist() == [3, 3, 3], t  # the segment's last request is not lost on its end
        assert not np.any((t - T0_S) % sg.WINDOW_S == 0.0), t  # none on the window grid


def test_series_do_not_fire_together_on_the_window_grid():
    w = servegen_workload(32, start_s=SERVEGEN_LAST_DAY_S + 20 * 3600, total_rate_rps=8.0, duration_s=1800,
                          pre_s=0.0, history_days=0, repeat_days=6, seed=0)
    t, m = w.trace.arrival_s, w.trace.model
    for g in (600.0, 1200.0):
        at = np.abs(t - g) < 1e-6
        # before: one request from nearly every series (30 of 32) at the same instant
        assert len(set(m[at].tolist())) <= 4, (g, m[at])


def test_burst_cv_keeps_each_windows_count():
    kw = dict(start_s=SERVEGEN_LAST_DAY_S + 17 * 3600, total_rate_rps=10.0, duration_s=3 * 3600, pre_s=0.0,
              history_days=0, seed=0)
    plain = servegen_workload(6, **kw)
    bursty = servegen_workload(6, burst_cv=4.0, **kw)
    assert bursty.meta["rate_scale"] == plain.meta["rate_scale"]
    windows = int(kw["duration_s"] // sg.WINDOW_S)
    for i in range(6):
        a, b = (np.bincount((w.trace.arrival_s[w.trace.model == i] // sg.WINDOW_S).astype(int), minlength=windows)
                for w in (plain, bursty))
        # the same expected count per window, rounded stochastically: at most one apart
        assert np.abs(a - b).max() <= 1, (plain.models[i], a, b)
    busiest = int(np.argmax(np.bincount(bursty.trace.model)))
    t = bursty.trace.arrival_s[bursty.trace.model == busiest]
    iat = np.diff(t)[np.diff(t // sg.WINDOW_S) == 0]  # gaps within a window
    assert iat.std() / iat.mean() == pytest.approx(4.0, rel=0.3)


@pytest.mark.parametrize("knob", [{"time_scale": float("nan")}, {"burst_cv": float("nan")}])
def test_a_nan_time_scale_or_burst_cv_is_refused_not_an_empty_workload(knob):
    from warmserve.errors import InvalidArgumentError
    from warmserve.workload.recipes import paper_workload

    with pytest.raises(InvalidArgumentError, match="must be > 0, got nan"):
        paper_workload("conv", 2, duration_s=60.0, history_days=0, **knob)
