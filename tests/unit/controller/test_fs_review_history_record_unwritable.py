"""The load history record (``--record-history``) when its folder stops taking writes under a running server: the
trouble is said once with the fix (not at every window's end), the windows stay in memory and reach the file once
it can be written, and the stop writes them again though no window closed after the failure.

The folder is made unwritable for real, with no mount: it is removed and a plain file put at its name, so every
write under it fails (ENOTDIR), as a full or read-only disk's do."""

from __future__ import annotations

import logging
import os
import shutil
import time

from warmserve.controller.history_file import read_history
from warmserve.controller.history_record import HistoryRecord

DAY_S = 86400.0
ORIGIN = float(int(time.time() // DAY_S) * DAY_S - 3 * DAY_S)


def _settled(rec: HistoryRecord) -> None:
    """Wait for the record's thread to take the windows given so far and try its write."""
    deadline = time.monotonic() + 5
    while rec._dirty and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the write itself: a failing one fails at once


def _break(folder) -> None:
    shutil.rmtree(folder)
    folder.write_text("a file where the record's folder was\n")


def _mend(folder) -> None:
    os.unlink(folder)
    folder.mkdir()


def _failures(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "could not write the load history" in r.getMessage()]


def test_a_failing_folder_is_said_once_with_the_fix_and_the_windows_reach_the_file_later(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="warmserve.controller")
    folder = tmp_path / "rec"
    folder.mkdir()
    path = str(folder / "h.csv")
    rec = HistoryRecord(path, ORIGIN)
    try:
        _break(folder)
        for i in range(3):  # three windows' ends, each write failing
            rec.window("m", 300.0 * (i + 1), 1.0 + i, 2.0 + i)
            _settled(rec)
        said = _failures(caplog)
        assert len(said) == 1, said
        assert path in said[0] and "Fix:" in said[0] and "--record-history" in said[0]
        _mend(folder)
        rec.window("m", 1200.0, 5.0, 6.0)
        _settled(rec)
        assert rec.writes == 1
        assert any("written again" in r.getMessage() for r in caplog.records)
    finally:
        rec.close()
    starts, avg, _ = read_history(path)["m"]
    assert list(starts - ORIGIN) == [300.0, 600.0, 900.0, 1200.0] and list(avg) == [1.0, 2.0, 3.0, 5.0]


def test_the_stop_writes_again_the_windows_a_failed_write_held(tmp_path, caplog):
    """No window closes between the failure and the stop: the stop's write is the only one left to keep them."""
    caplog.set_level(logging.INFO, logger="warmserve.controller")
    folder = tmp_path / "rec"
    folder.mkdir()
    path = str(folder / "h.csv")
    rec = HistoryRecord(path, ORIGIN)
    _break(folder)
    rec.window("m", 300.0, 1.5, 2.0)
    _settled(rec)
    _mend(folder)  # the disk is mended before the stop
    rec.close()
    assert list(read_history(path)["m"][1]) == [1.5]


def test_a_stop_that_cannot_write_says_the_windows_are_lost(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="warmserve.controller")
    folder = tmp_path / "rec"
    folder.mkdir()
    rec = HistoryRecord(str(folder / "h.csv"), ORIGIN)
    _break(folder)
    rec.window("m", 300.0, 1.5, 2.0)
    _settled(rec)
    rec.close()
    lost = [r.getMessage() for r in caplog.records if "are lost" in r.getMessage()]
    assert len(lost) == 1 and "Fix:" in lost[0], [r.getMessage() for r in caplog.records]
