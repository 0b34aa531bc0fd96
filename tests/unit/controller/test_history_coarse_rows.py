"""A history whose rows are further apart than the policy's window (hourly rows, 300 s windows) is warned of at
the controller's start, naming the model and the fix. Found in review: such a file filled 1 window in 12, and the
other 11 had no forecast and no prewarm, silently. Not filled in: rows further apart may as well be a file that
lists only the windows with traffic (the simulator's and bench replay's histories leave empty windows out)."""

from __future__ import annotations

import logging

import numpy as np

from warmserve.controller.clock import history_on_clock
from warmserve.policy.history import History


def test_an_hourly_history_is_warned_of_and_a_per_window_one_is_not(caplog):
    hours = np.arange(48) * 3600.0
    per_window = np.arange(0, 48 * 3600, 300.0)
    history = {"hourly": (hours, np.ones(48), np.ones(48)),
               "sparse": (np.delete(per_window, np.arange(1, len(per_window), 3)), None, None),
               "fine": (per_window, np.ones(len(per_window)), np.ones(len(per_window)))}
    history["sparse"] = (history["sparse"][0], np.ones(len(history["sparse"][0])), np.ones(len(history["sparse"][0])))
    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        out = history_on_clock(history, 0.0, {"hourly", "sparse", "fine"}, window_s=300.0)
    warned = [r.getMessage() for r in caplog.records if "at least" in r.getMessage()]
    assert len(warned) == 1 and "'hourly'" in warned[0] and "3600 s apart" in warned[0], warned
    assert set(out) == {"hourly", "sparse", "fine"}  # nothing dropped


def test_rows_that_leave_windows_out_stay_gaps():
    h = History(["a"], 300.0)
    h.load("a", [0.0, 3600.0, 7200.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert h.avg[0, [0, 12, 24]].tolist() == [1.0, 2.0, 3.0] and np.isnan(h.avg[0, 1:12]).all()
