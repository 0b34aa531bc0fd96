"""A history whose rows are coarser than the policy's window (hourly rows, 300 s windows) holds each row for the
windows it spans (``history._spread``). Found in review: only each row's first window was filled, so 11 of every
12 windows had no forecast and got no prewarm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from warmserve.policy import make_policy
from warmserve.policy.history import History
from warmserve.policy.state import ModelInfo

M = [ModelInfo("a", 10 << 30, 1, 1 << 19)]
P = 288  # 300 s windows a day


def test_an_hourly_history_forecasts_every_window():
    hours = np.arange(3 * 24)  # three days, one row per hour
    level = 10.0 * (hours % 24)  # 100 in flight from 10:00 to 11:00 every day
    pol = make_policy("warmserve", models=M, history={"a": (hours * 3600.0, level, 1.5 * level)})
    for minute in (0, 30, 55):
        avg, peak = pol.forecast("a", 3 * P + 10 * 12 + minute // 5)
        assert not math.isnan(avg) and avg == pytest.approx(100.0, rel=0.2), (minute, avg)
        assert peak >= avg


def test_a_gap_wider_than_a_row_stays_a_gap_and_fine_rows_are_unchanged():
    h = History(["a"], 300.0)
    h.load("a", [0.0, 3600.0, 3 * 3600.0, 4 * 3600.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert list(h.avg[0, :12]) == [1.0] * 12 and list(h.avg[0, 12:24]) == [2.0] * 12
    assert np.isnan(h.avg[0, 24:36]).all()  # 02:00-03:00: no row
    assert list(h.avg[0, 36:60]) == [3.0] * 12 + [4.0] * 12
    fine = History(["a"], 300.0)
    fine.load("a", [0.0, 300.0, 900.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])  # the median step is one window
    assert fine.avg[0, :3].tolist()[:2] == [1.0, 2.0] and math.isnan(fine.avg[0, 2]) and fine.avg[0, 3] == 3.0
