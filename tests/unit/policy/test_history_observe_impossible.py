"""A live window with an impossible load (inf, negative, past MAX_HISTORY_LOAD), from review: ``History.observe``
took it, and every forecaster's next forecast was inf (an inf forecast crashed the policy's ticks). It is recorded
as missing, with a warning, and the forecast stays finite."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from warmserve.policy.forecast import ModelForecaster
from warmserve.policy.history import History


@pytest.mark.parametrize("bad", [math.inf, -1.0, 1e9])
def test_an_impossible_live_window_is_missing_and_the_forecast_finite(caplog, bad):
    h = History(["a"], 300.0)
    for i in range(40):
        h.observe("a", i * 300.0, 2.0, 3.0)
    with caplog.at_level(logging.WARNING, logger="warmserve.policy.history"):
        h.observe("a", 40 * 300.0, bad, bad)
    assert "impossible load" in caplog.text
    assert math.isnan(h.avg[0, 40]) and math.isnan(h.peak[0, 40]) and h.avg[0, 39] == 2.0
    for method in ("paper", "holt-winters", "stl", "last-value", "auto"):
        f = ModelForecaster(method, 12).predict(h.avg[0, :41])
        assert np.isfinite(f) and f >= 0, method
