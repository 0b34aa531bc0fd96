"""A statistical forecaster's fits are spread over ticks (``demand.FITS_PER_TICK``), the paper forecast standing
in until a series is fitted: found in review, with "stl" and 12 models the first tick of a day fitted all 24
series at once, 8-12 s on the live controller's event loop (workers are lost after 3 s of silence). Counted, not
timed: each tick makes at most FITS_PER_TICK fits, and once fitted the forecasts are the unbudgeted ones."""

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


def _policy(forecaster: str):
    models = [ModelInfo(f"m{i}", 10 << 30, 1, 1 << 19) for i in range(3)]
    rng = np.random.default_rng(0)
    n = DAYS * PERIOD
    hist = {}
    for k, m in enumerate(models):
        a = 20 + 10 * np.sin(np.arange(n) * 2 * np.pi / PERIOD + k) + rng.normal(0, 2, n)
        hist[m.name] = (np.arange(n) * WINDOW_S, a, 1.5 * a)
    cfg = PolicyConfig(forecaster=forecaster, window_s=WINDOW_S)
    return make_policy("warmserve", models=models, config=cfg, history=hist), models, hist


@pytest.mark.parametrize("forecaster", ["stl", "holt-winters"])
def test_a_tick_makes_one_fit_and_the_forecasts_converge(monkeypatch, forecaster):
    fits = []
    real = F.fit_state
    monkeypatch.setattr(F, "fit_state", lambda *a, **k: fits.append(a[0]) or real(*a, **k))
    pol, models, hist = _policy(forecaster)
    state = ClusterState.uniform(1, models)
    now = DAYS * PERIOD * WINDOW_S + 1.0  # the first tick of a day: every series wants its day's fit
    window = DAYS * PERIOD
    paper = {m.name: F.paper_next(hist[m.name][1], PERIOD) for m in models}
    per_tick = []
    for k in range(2 * len(models) + 2):
        before = len(fits)
        pol.tick(state, now + k)
        per_tick.append(len(fits) - before)
        if k == 0:  # one series fitted, the others stand on the paper forecast meanwhile
            avg, _ = pol.forecast_all(window, [m.name for m in models])
            assert sum(a == pytest.approx(paper[m.name]) for a, m in zip(avg, models)) >= len(models) - 1
    assert max(per_tick) <= FITS_PER_TICK and sum(per_tick) == 2 * len(models), per_tick
    assert all(fc.ready(window) for pair in pol._fc.values() for fc in pair)
    avg, peak = pol.forecast_all(window, [m.name for m in models])
    for m, a, p in zip(models, avg, peak):
        ref = F.ModelForecaster(forecaster, PERIOD)
        assert a == pytest.approx(ref.predict(hist[m.name][1]))
        assert p == pytest.approx(max(F.ModelForecaster(forecaster, PERIOD).predict(hist[m.name][2]), a))
