"""``policy.history.History`` against hand-computed values: a partly measured window merged with what the history
already knew of it (or the forecast, only where it knew nothing), and the mean peak the static layouts share GPUs
by."""

import math

import pytest

from warmserve.policy.history import History


def _forecast():
    """A window's forecast (avg 100, peak 100), far from every measured value so that using it shows."""
    return 100.0, 100.0


def test_a_partly_measured_window_blends_with_the_known_value_not_the_forecast():
    """Window 0 known as avg 10, peak 20; the last 60 s of its 300 s measured avg 4, peak 30 (f = 0.2): avg
    10 x 0.8 + 4 x 0.2 = 8.8 and peak 30, the forecast unused since a value was known."""
    h = History(["a"], 300.0)
    h.set("a", 0, 10.0, 20.0)
    avg, peak = h.merge_partial("a", 0.0, 4.0, 30.0, 60.0, expected=_forecast)
    assert avg == pytest.approx(8.8) and peak == 30.0


def test_an_unknown_window_takes_the_forecast_only_for_a_short_measurement():
    """No value known for window 1: 60 s measured of 300 (f = 0.2, under half) blends with the forecast, 100 x 0.8
    + 4 x 0.2 = 80.8, peak 100; 240 s measured (f = 0.8) stands for the window as it is."""
    h = History(["a"], 300.0)
    h.set("a", 0, 10.0, 20.0)
    avg, peak = h.merge_partial("a", 300.0, 4.0, 30.0, 60.0, expected=_forecast)
    assert avg == pytest.approx(80.8) and peak == 100.0
    assert h.merge_partial("a", 300.0, 4.0, 30.0, 240.0, expected=_forecast) == (4.0, 30.0)
    assert h.merge_partial("a", 300.0, 4.0, 30.0, 60.0) == (4.0, 30.0)


def test_mean_peak_is_one_for_a_model_idle_or_unseen():
    """Peaks 2 and 4 known for a: mean 3; b known only idle (peak 0) and c never seen both count as 1."""
    h = History(["a", "b", "c"], 300.0)
    h.set("a", 0, 1.0, 2.0)
    h.set("a", 2, 1.0, 4.0)
    h.set("b", 0, 0.0, 0.0)
    h.set("b", 1, 0.0, 0.0)
    out = h.mean_peak()
    assert out == {"a": 3.0, "b": 1.0, "c": 1.0}
    assert not any(math.isnan(v) for v in out.values())


def test_span_counts_windows_from_the_first_known_to_the_last():
    """Nothing known: a span of 0. Windows 2 (model a) and 5 (model b) known: 4 windows, gaps included."""
    h = History(["a", "b"], 300.0)
    assert h.span_windows() == 0
    h.set("a", 2, 1.0, 1.0)
    h.set("b", 5, 1.0, 1.0)
    assert h.span_windows() == 4
