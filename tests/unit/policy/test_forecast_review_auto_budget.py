"""Every fit of ``auto``'s pick counts against ``demand.FITS_PER_TICK``. Found in review: the pick's backtest (4
fits) and the chosen method's fit made 5 fits on one unit of the budget, in one tick (2.5-4 s at 300 s windows,
on the live controller's event loop, where workers are lost after 3 s of silence). Now a tick makes at most one,
the backtest goes on at the next tick from the fits made so far (cached), and the paper forecast stands in
until the pick is made; then the forecasts are those of an unbudgeted ``ModelForecaster``."""

from __future__ import annotations

import numpy as np
import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import forecast as F
from warmserve.policy.demand import FITS_PER_TICK
from warmserve.policy.state import ClusterState, ModelInfo

WINDOW_S = 3600.0  # 24 windows a day: small fits
PERIOD = 24
DAYS = 5


def _series(n: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(k)
    return 20 + 10 * np.sin(np.arange(n) * 2 * np.pi / PERIOD + k) + rng.normal(0, 2, n)


def test_auto_makes_at_most_one_fit_a_tick_and_ends_on_the_unbudgeted_forecast(monkeypatch):
    fits = []
    real = F.fit_state
    # (method, origin, series): the avg and the peak series each make their own fits
    monkeypatch.setattr(F, "fit_state", lambda *a, **k: fits.append((a[0], a[3], float(np.nansum(a[1])))) or
                        real(*a, **k))
    models = [ModelInfo("m0", 10 << 30, 1, 1 << 19)]
    n = DAYS * PERIOD
    a = _series(n, 0)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(forecaster="auto", window_s=WINDOW_S),
                      history={"m0": (np.arange(n) * WINDOW_S, a, 1.5 * a)})
    state = ClusterState.uniform(1, models)
    now = n * WINDOW_S + 1.0  # the first tick of a day: both series want auto's pick
    per_tick = []
    for k in range(12):
        before = len(fits)
        pol.tick(state, now + k)
        per_tick.append(len(fits) - before)
        if k == 0:  # the pick is under way: the paper forecast stands in
            avg, peak = pol.forecast("m0", n)
            assert avg == pytest.approx(F.paper_next(a, PERIOD))
    assert max(per_tick) <= FITS_PER_TICK, per_tick
    assert sum(per_tick) > 2 * FITS_PER_TICK  # the picks took several ticks (5 fits each at most)
    assert all(fc.ready(n) for fc in pol._fc["m0"])
    assert len(fits) == len(set(fits))  # a backtest resumed from its cached fits makes none of them twice
    ref_avg, ref_peak = F.ModelForecaster("auto", PERIOD), F.ModelForecaster("auto", PERIOD)
    avg, peak = pol.forecast("m0", n)
    assert avg == pytest.approx(ref_avg.predict(a))
    assert peak == pytest.approx(max(ref_peak.predict(1.5 * a), avg))
    assert pol._fc["m0"][0]._chosen[n] == ref_avg._chosen[n]


def test_a_backtest_interrupted_by_the_budget_goes_on_from_its_cached_fits(monkeypatch):
    fits = []
    real = F.fit_state
    monkeypatch.setattr(F, "fit_state", lambda *a, **k: fits.append((a[0], a[3])) or real(*a, **k))
    n = DAYS * PERIOD
    y = _series(n, 1)
    fc = F.ModelForecaster("auto", PERIOD)
    budget = []

    def one_a_call():  # one fit per predict call, as one per tick
        if budget:
            return False
        budget.append(1)
        return True

    calls = 0
    while not fc.ready(n):
        budget.clear()
        v = fc.predict(y, one_a_call)
        calls += 1
        assert calls < 10
        if not fc.ready(n):
            assert v == pytest.approx(F.paper_next(y, PERIOD))
    assert len(fits) == len(set(fits)) and calls == len(fits) >= 4  # every fit made once, one a call
    ref = F.ModelForecaster("auto", PERIOD)
    assert fc.predict(y, lambda: False) == pytest.approx(ref.predict(y))
