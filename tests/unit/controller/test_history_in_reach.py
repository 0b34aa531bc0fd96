"""The history the live policy starts from (controller/clock.py ``history_in_reach``). Found in review: one row a
year old, even of a model the cluster does not serve, set the policy clock's origin, and every model then held a
window per second since (1 s windows): 3.7 GB and a first tick of 13.4 s; and a shared file of 2,000 models logged a
line for each one not served. Now only served models' rows count, none older than HISTORY_MAX_WINDOWS windows, and
what is left out is said in one warning each."""

from __future__ import annotations

import logging
import time

from warmserve.controller.clock import HISTORY_MAX_WINDOWS, history_in_reach, history_on_clock, policy_clock_origin


def test_a_year_old_row_of_an_unserved_model_does_not_move_the_clock():
    now = time.time()
    hist = {"gone": ([now - 365 * 86400], [1.0], [2.0]), "a": ([now - 3600, now - 1800], [1.0, 2.0], [2.0, 3.0])}
    used = history_in_reach(hist, {"a"}, now, 1.0)
    assert list(used) == ["a"] and len(used["a"][0]) == 2
    # the origin is the usual week back, not a year: 8 days of 1 s windows at most, not 366
    assert now - policy_clock_origin(now, used) < 8 * 86400
    assert now - policy_clock_origin(now, hist) > 364 * 86400  # what the whole file did


def test_rows_past_the_window_budget_are_dropped_with_one_warning(caplog):
    now = time.time()
    reach_s = HISTORY_MAX_WINDOWS * 1.0
    starts = [now - 300 * 86400, now - 200 * 86400, now - reach_s + 60, now - 60]
    hist = {"a": (starts, [1.0] * 4, [2.0] * 4), "b": ([now - 250 * 86400], [1.0], [1.0])}
    caplog.set_level(logging.WARNING)
    used = history_in_reach(hist, {"a", "b"}, now, 1.0)
    assert used["a"][0].tolist() == starts[2:] and len(used["b"][0]) == 0
    said = [r.getMessage() for r in caplog.records if "are not used" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("history: 3 rows from 300.0 days back") and "window_s" in said[0]
    # under 300 s windows the same rows are all within reach (the file's own 366 days bind there)
    assert len(history_in_reach(hist, {"a", "b"}, now, 300.0)["a"][0]) == 4
    origin = policy_clock_origin(now, used)
    assert (now - origin) / 1.0 <= HISTORY_MAX_WINDOWS + 2 * 86400  # a midnight at most a day before the reach


def test_unserved_models_are_named_in_one_line(caplog):
    now = time.time()
    hist = {f"m{i}": ([now - 60], [1.0], [1.0]) for i in range(2000)}
    caplog.set_level(logging.WARNING)
    assert history_in_reach(hist, {"m7"}, now, 300.0).keys() == {"m7"}
    on_clock = history_on_clock(hist, policy_clock_origin(now, None), {"m7"}, 300.0)
    assert on_clock.keys() == {"m7"}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("history names 1999 model(s) this cluster does not serve"), lines
    caplog.clear()
    history_in_reach(hist, {"other"}, now, 300.0)
    assert any("none of the history's models is served here" in r.getMessage() for r in caplog.records)
