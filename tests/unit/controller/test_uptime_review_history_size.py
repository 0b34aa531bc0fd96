"""A long history at start (uptime review): a year of windows is read into packed columns, not a Python object a
row, and the record file's table holds only the days it keeps from the start on, not until the first window
closes."""

from __future__ import annotations

import logging
import time
import tracemalloc

import numpy as np

from warmserve.controller.history_file import read_history
from warmserve.controller.history_record import RECORD_KEEP_DAYS, HistoryRecord

DAY_S = 86400.0
WINDOW_S = 300.0


def _write_csv(path, models: int, days: float, now: float) -> int:
    starts = np.arange(now - days * DAY_S, now - WINDOW_S, WINDOW_S).round()
    with open(path, "w") as f:
        f.write("model,window_start_s,avg,peak\n")
        for k in range(models):
            f.writelines(f"m{k},{s:.15g},{1 + k + (i % 7) / 8:.9g},{2 + k:.9g}\n" for i, s in enumerate(starts))
    return len(starts)


def test_a_long_history_is_read_into_packed_columns(tmp_path):
    """Found in the uptime review: a year of 300 s windows of 8 models (841k rows) took 2.6-3.6 s and 206 MB at its
    peak to read, as a dict and a tuple per row, and the start waited on it; packed, 1.2-1.8 s and 93 MB. Here 8
    models x 30 days (69k rows): 12.6 MiB traced at the peak before, 4.9 MiB now."""
    path = tmp_path / "h.csv"
    n = _write_csv(path, 8, 30, time.time())
    tracemalloc.start()
    try:
        hist = read_history(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(hist) == [f"m{k}" for k in range(8)] and all(len(hist[m][0]) == n for m in hist)
    assert peak < 120 * 8 * n, f"{peak / 2**20:.1f} MiB at the peak for {8 * n} rows"  # 136 B a row as tuples
    starts, avg, peak_col = hist["m1"]
    assert np.all(np.diff(starts) > 0) and avg[1] == 2.125 and peak_col[0] == 3.0


def test_rows_out_of_order_and_of_one_start_read_as_before(tmp_path):
    """The packed read sorts by start and merges the rows of one start as the row-by-row one did."""
    now = float(int(time.time() // WINDOW_S) * WINDOW_S)
    path = tmp_path / "h.csv"
    path.write_text(f"model,window_start_s,avg,peak\n\nb,{now - 600:.0f},1,2\na,{now - 300:.0f},5,6\n"
                    f"a,{now - 900:.0f},1,1\na,{now - 300:.0f},3,9\n")
    hist = read_history(str(path))
    starts, avg, peak = hist["a"]
    assert list(starts) == [now - 900, now - 300] and list(avg) == [1.0, 4.0] and list(peak) == [1.0, 9.0]
    assert list(hist["b"][0]) == [now - 600]


def test_the_record_holds_only_its_kept_days_of_a_long_starting_history(tmp_path, caplog):
    """Found in the uptime review: `--history F --record-history F` with a year of 8 models' windows in F held every
    row in the record's table until the first window closed (300 s on), the controller at 361 MB instead of 137 MB.
    The rows past the kept days are left out at the start; the first write says all the rows dropped, once."""
    now = float(int(time.time()))  # whole seconds: the window at now is written at now, not a rounding before it
    days = 60
    starts = np.arange(now - days * DAY_S, now - WINDOW_S, WINDOW_S).round()
    ones = np.ones(len(starts))
    origin = float(int(now // DAY_S) * DAY_S - 7 * DAY_S)
    caplog.set_level(logging.INFO, logger="warmserve.controller")
    rec = HistoryRecord(str(tmp_path / "h.csv"), origin, {"a": (starts, ones, ones), "b": (starts, ones, ones)},
                        started_unix_s=now)
    try:
        held = len(rec._rows)
        gap = now - starts.max()  # the time down, not counted
        kept_a = int((starts + gap >= starts.max() - RECORD_KEEP_DAYS * DAY_S).sum())
        assert held == 2 * kept_a, (held, 2 * kept_a, 2 * len(starts))
        rec.window("a", now - origin, 2.0, 2.0)
    finally:
        rec.close()
    written = read_history(str(tmp_path / "h.csv"))
    kept = starts[starts + gap >= now - RECORD_KEEP_DAYS * DAY_S]  # the first write's cut: the same rule
    assert list(written["b"][0]) == list(kept) and list(written["a"][0]) == list(kept) + [now]
    dropped = 2 * len(starts) - sum(len(written[m][0]) for m in written) + 1  # +1: the measured window
    said = [r.getMessage() for r in caplog.records if "rows dropped" in r.getMessage()]
    assert len(said) == 1 and f": {dropped} rows dropped, the oldest from {days:.0f}" in said[0][:200], said
