"""Edges of the forecast functions (``policy.forecast``) against hand-computed values: gap filling without a
prior, persistence from the very first window, the zero floor of a statistical method's paper fallback, the
backtest's pick with no data to judge by, and a fit that comes out non-finite."""

import numpy as np

from warmserve.policy.forecast import fill_gaps, fit_state, last_value_one_step, one_step, select_method

P = 8


def test_gaps_without_a_slot_prior_are_interpolated_and_no_data_is_zero():
    """On the first day no slot has a prior: a gap is the straight line between its neighbours (and the edge value
    beyond the last one); a series with no value at all fills with zeros."""
    filled = fill_gaps(np.array([1.0, np.nan, 3.0, np.nan]), P)
    assert filled.tolist() == [1.0, 2.0, 3.0, 3.0]
    assert fill_gaps(np.array([np.nan, np.nan]), P).tolist() == [0.0, 0.0]


def test_last_value_starts_from_the_first_window():
    """Persistence forecasts each window by the last one observed, the first window (index 0) included; a gap
    repeats the value before it."""
    f = last_value_one_step(np.array([5.0, np.nan, 7.0]))
    assert np.isnan(f[0])
    assert f[1:].tolist() == [5.0, 5.0, 7.0]


def test_statistical_method_on_too_little_history_floors_at_zero_not_above():
    """Three idle windows are too few for any fit: Holt-Winters and STL stand in with the paper method, whose
    forecast of an idle model is 0 (the floor clips negatives only)."""
    for method in ("holt-winters", "stl"):
        f = one_step(method, np.zeros(3), P)
        assert f[1:].tolist() == [0.0, 0.0, 0.0]


def test_select_method_with_nothing_to_judge_keeps_the_first_method():
    """A backtest over idle windows (no actual above 0) has no error for any method: the first one given wins."""
    y = np.zeros(3 * P)
    assert select_method(y, P, 2 * P, 3 * P, methods=("paper", "last-value")) == "paper"
    assert select_method(y, P, 2 * P, 3 * P, methods=("last-value", "paper")) == "last-value"


def test_a_non_finite_fit_is_reported_and_gives_no_state():
    """An infinite window makes the fitted level NaN: ``fit_state`` passes the error to ``on_error`` once and
    returns None (the paper method stands in); with no ``on_error`` it returns None quietly."""
    y = np.arange(5 * P, dtype=float) % P + 1
    y[20] = np.inf
    for method in ("holt-winters", "stl"):
        errors: list = []
        assert fit_state(method, y, P, 5 * P, 4, errors.append) is None
        assert len(errors) == 1 and isinstance(errors[0], ValueError) and "non-finite" in str(errors[0])
        assert fit_state(method, y, P, 5 * P, 4) is None


def test_a_fit_starts_from_the_level_at_the_end_of_its_days_not_the_start():
    """Three days at a level of 10 then one at 50 (a daily shape of 0-5 on top, a little noise): the fitted state's
    level, and so the next window's forecast, follow the last day's load (above 40), not the first day's 10."""
    t = np.arange(4 * P)
    shape = np.tile([0.0, 1.0, 3.0, 5.0, 5.0, 3.0, 1.0, 0.0], 4)
    y = np.where(t < 3 * P, 10.0, 50.0) + shape + np.random.default_rng(0).normal(0.0, 0.2, len(t))
    for method in ("holt-winters", "stl"):
        alpha, gamma, level, season = fit_state(method, y, P, 4 * P, 4)
        assert 40.0 < level < 70.0, (method, level)
        assert 40.0 < one_step(method, y, P, start=4 * P)[4 * P] < 70.0
