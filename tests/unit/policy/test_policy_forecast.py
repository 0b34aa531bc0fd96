import math

import numpy as np
import pytest

from warmserve.policy.forecast import (
    ModelForecaster, fill_gaps, mean_relative_error, one_step, paper_next, select_method, slot_prior,
)

P = 48  # 30-minute windows: a short day keeps the statsmodels fits fast


def seasonal(days=6, noise=0.0, seed=0):
    t = np.arange(days * P)
    y = 100 + 40 * np.sin(2 * np.pi * t / P) + 15 * np.cos(4 * np.pi * t / P)
    return y + np.random.default_rng(seed).normal(0, noise, len(y))


def test_prior_is_the_mean_of_earlier_days_same_slot():
    y = np.arange(3 * P, dtype=float)
    pr = slot_prior(y, P)
    assert np.isnan(pr[:P]).all()
    assert pr[P + 5] == y[5] and pr[2 * P + 5] == (y[5] + y[P + 5]) / 2 and pr[3 * P] == (y[0] + y[P] + y[2 * P]) / 3


def test_paper_correction_hand_computed():
    y = np.full(2 * P, 10.0)
    y[P - 1] = np.nan
    y[P: P + 3] = [12.0, 13.0, 11.0]  # residuals 2, 3, 1 against a prior of 10
    f = one_step("paper", y[: P + 3], P)
    assert f[P + 3] == pytest.approx(10 + (1 * 1 + 3 * 0.5 + 2 * 0.25) / 1.75)
    assert paper_next(y[: P + 3], P) == pytest.approx(f[P + 3])


@pytest.mark.parametrize("method", ["paper", "holt-winters", "stl"])
def test_known_season_is_forecast_near_exactly(method):
    y = seasonal(noise=0.5)  # a little noise (0.5%): a noise-free series makes the optimiser crawl
    f = one_step(method, y, P, start=4 * P)
    assert mean_relative_error(f[4 * P: 6 * P], y[4 * P:]) < 0.01


@pytest.mark.parametrize("method", ["paper", "holt-winters", "stl"])
def test_gaps_are_missing_not_zero(method):
    y = seasonal(noise=1.0)
    y[[10, 60, 61, 62, 150, 200, 230]] = np.nan
    f = one_step(method, y, P, start=4 * P)
    assert np.isfinite(f[4 * P:]).all()
    assert mean_relative_error(f[4 * P: 6 * P], y[4 * P:]) < 0.03
    assert not np.isnan(fill_gaps(y, P)).any()


def test_short_and_empty_histories():
    assert math.isnan(ModelForecaster("paper", P).predict(np.array([])))
    assert math.isnan(ModelForecaster("paper", P).predict(np.array([np.nan, np.nan])))
    # less than a day: the weighted mean of the last windows
    assert ModelForecaster("holt-winters", P).predict(np.array([4.0, 8.0])) == pytest.approx((8 + 4 * 0.5) / 1.5)
    assert ModelForecaster("stl", P).predict(seasonal(1)) > 0


def test_runtime_forecaster_matches_the_backtest_function():
    y = seasonal(5, noise=2.0)
    for method in ("paper", "holt-winters", "stl"):
        fc = ModelForecaster(method, P)
        f = one_step(method, y, P, start=4 * P + 7)
        for n in (4 * P + 7, 4 * P + 20):
            assert fc.predict(y[:n]) == pytest.approx(f[n])


def test_selector_picks_by_backtest():
    rng = np.random.default_rng(3)
    # A level shift every day: the seasonal prior lags, the statistical methods adapt.
    y = np.concatenate([seasonal(1) + 60 * d for d in range(6)]) + rng.normal(0, 0.5, 6 * P)
    assert select_method(y, P, 5 * P, 6 * P) != "paper"
    # Pure season with noise: the paper method is as good as any.
    z = seasonal(6, noise=0.5)
    errs = {m: mean_relative_error(one_step(m, z, P, 5 * P)[5 * P: 6 * P], z[5 * P:]) for m in ("paper", "stl")}
    assert errs["paper"] < 0.02 and errs["stl"] < 0.02
    assert ModelForecaster("auto", P).predict(y) > 0


def test_the_reactive_ablation_forecasts_a_window_by_the_one_before_it_never_a_later_one():
    """forecast=False: the last window seen before ``window_index`` stands for it, even where the history holds
    later windows (loaded from a file); window 0 has none before it (NaN)."""
    from warmserve.policy import PolicyConfig, make_policy
    from warmserve.policy.state import ModelInfo

    pol = make_policy("warmserve", models=[ModelInfo("a", 13 << 30, 1, 512 << 10)],
                      config=PolicyConfig(forecast=False, window_s=300.0))
    for i in range(8):
        pol.observe_window("a", i * 300.0, float(i + 1), float(10 * (i + 1)))
    assert all(math.isnan(x) for x in pol.forecast("a", 0))
    assert pol.forecast("a", 1) == (1.0, 10.0)
    assert pol.forecast("a", 5) == (5.0, 50.0)
    assert pol.forecast("a", 12) == (8.0, 80.0)  # past the history: its last window


def test_a_colocation_weighs_each_model_by_its_forecast_peak_and_by_its_mean_peak_without_one():
    """``forecast_need``: a counts its forecast peak of window 5 (50, the window before), not its mean peak (45);
    b, with no history, counts 1 and one GPU (nothing says it is idle)."""
    from warmserve.policy import PolicyConfig, make_policy
    from warmserve.policy.state import ModelInfo

    pol = make_policy("warmserve", models=[ModelInfo(n, 13 << 30, 1, 512 << 10) for n in "ab"],
                      config=PolicyConfig(forecast=False, window_s=300.0))
    for i in range(8):
        pol.observe_window("a", i * 300.0, float(i + 1), float(10 * (i + 1)))
    assert pol.forecast_need(5) == (2, {"a": 50.0, "b": 1.0})
    assert pol.forecast_need(0) == (2, {"a": 45.0, "b": 1.0})  # no forecast of window 0: a's mean peak
