"""``recipes._circular_stretch`` called directly with extreme numbers (found in review; the recipes pass checked
ones). The copies and rows limits already covered a tiny period and a huge length (refused at once). Not covered:
a NaN or infinite rate, length or period ended in "cannot convert float NaN to integer", an OverflowError or a
ZeroDivisionError, and a piece shorter than the trace's gaps (a 1e-7 s replay after the warm-up) got no row, so
the search for copies re-read 5, 6, ... copies of the trace each pass: hours before the rows limit refused it.
Now refused naming the argument, and the search's rows are bounded over all its passes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload.azure import load_azure
from warmserve.workload.recipes import MAX_STRETCH_SEARCH_ROWS, _circular_stretch, paper_workload

NAN, INF = float("nan"), float("inf")
TRACE = np.arange(0.0, 100.0, 0.5)  # 200 rows over 100 s


def _stretch(period_s=100.0, offset_s=0.0, length_s=50.0, rate_rps=1.0, split_s=0.0, arrival_s=TRACE):
    return _circular_stretch(arrival_s, period_s, offset_s, length_s, rate_rps, np.random.default_rng(0),
                             split_s=split_s)


@pytest.mark.parametrize("name, value", [("rate_rps", NAN), ("rate_rps", INF), ("rate_rps", -1.0),
                                         ("length_s", NAN), ("length_s", INF), ("length_s", 0.0),
                                         ("period_s", NAN), ("period_s", INF), ("period_s", 0.0),
                                         ("offset_s", NAN), ("offset_s", -INF), ("split_s", NAN)])
def test_a_number_a_stretch_cannot_be_read_by_is_refused_naming_it(name, value):
    with pytest.raises(InvalidArgumentError, match=rf"circular stretch {name}=") as e:
        _stretch(**{name: value})
    assert e.value.fields[name] == value or (value != value and e.value.fields[name] != e.value.fields[name])


@pytest.mark.parametrize("kw", [{"period_s": 1e-12}, {"length_s": 1e15}])
def test_a_tiny_period_or_a_huge_length_is_refused_by_the_rows_limit_at_once(kw):
    t0 = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match="rows; at most"):
        _stretch(**kw)
    assert time.perf_counter() - t0 < 1.0


def test_a_rate_of_zero_gives_an_empty_stretch():
    t, idx = _stretch(rate_rps=0.0)
    assert len(t) == 0 and len(idx) == 0


def test_a_piece_shorter_than_the_traces_gaps_is_refused_within_the_search_rows():
    arrival = load_azure("conv").arrival_s
    period = float(arrival[-1]) + 1e-6
    t0 = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match=r"pieces \(600 s and 1e-07 s long\) hold too few") as e:
        _stretch(period, 0.0, 600.0 + 1e-7, 24.0, 600.0, arrival_s=arrival)
    assert time.perf_counter() - t0 < 30.0  # before: hours
    assert e.value.fields["rows_read"] <= MAX_STRETCH_SEARCH_ROWS


def test_a_recipe_with_a_replay_shorter_than_the_traces_gaps_is_refused_not_hung():
    with pytest.raises(InvalidArgumentError, match="hold too few of the trace's rows"):
        paper_workload("conv", 1, total_rate_rps=24.0, duration_s=1e-7, history_days=0, seed=0)


def test_a_one_second_replay_still_builds():
    w = paper_workload("conv", 7, total_rate_rps=24.0, duration_s=1.0, history_days=3, seed=0)
    assert len(w.trace) > 0
