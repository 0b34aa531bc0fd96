"""The controller's record of the load it measured (``--record-history``): the file ``read_history`` reads back,
the starting history kept beside the measured windows, and a record file that would lose rows refused."""

from __future__ import annotations

import logging
import math
import os
import shutil
import time

import numpy as np
import pytest

from warmserve.config import ControllerConfig
from warmserve.controller.history_file import read_history
from warmserve.controller.history_record import RECORD_KEEP_DAYS, HistoryRecord, starting_history
from warmserve.errors import InvalidArgumentError

DAY_S = 86400.0
ORIGIN = float(int(time.time() // DAY_S) * DAY_S - 3 * DAY_S)  # the policy clock's t = 0, three days back


def test_measured_windows_read_back_as_the_history_with_the_starting_rows_kept(tmp_path):
    path = str(tmp_path / "h.csv")
    start = {"a": (np.array([ORIGIN, ORIGIN + 300]), np.array([1.0, np.nan]), np.array([2.0, np.nan]))}
    rec = HistoryRecord(path, ORIGIN, start)
    rec.window("a", 300.0, 4.5, 7.0)  # replaces the starting NaN row of the same start
    rec.window("b,c", 600.0, 0.25, 1.0)  # a comma in a model's name is quoted
    rec.window("a", 900.0, math.nan, math.nan)  # no data: not a row
    rec.close()
    hist = read_history(path)
    assert set(hist) == {"a", "b,c"}
    starts, avg, peak = hist["a"]
    assert list(starts) == [ORIGIN, ORIGIN + 300] and list(avg) == [1.0, 4.5] and list(peak) == [2.0, 7.0]
    assert list(hist["b,c"][0]) == [ORIGIN + 600] and list(hist["b,c"][1]) == [0.25]


def test_an_impossible_load_is_left_out_so_the_next_start_reads_the_file(tmp_path):
    """``History.observe`` keeps such a window as missing; written, it made the next start refuse the file."""
    path = str(tmp_path / "h.csv")
    rec = HistoryRecord(path, ORIGIN)
    rec.window("a", 0.0, math.inf, 3.0)
    rec.window("a", 300.0, -1.0, 3.0)
    rec.window("a", 600.0, 2.0, 3.0)
    rec.close()
    assert list(read_history(path)["a"][1]) == [2.0]


def test_windows_older_than_the_kept_days_are_dropped(tmp_path):
    path = str(tmp_path / "h.csv")
    old = ORIGIN - (RECORD_KEEP_DAYS + 1) * DAY_S
    rec = HistoryRecord(path, ORIGIN, {"a": (np.array([old, ORIGIN - DAY_S]), np.ones(2), np.ones(2))})
    rec.window("a", 0.0, 3.0, 3.0)
    rec.close()
    assert list(read_history(path)["a"][0]) == [ORIGIN - DAY_S, ORIGIN]


def test_a_failed_write_is_warned_of_and_the_next_window_writes_the_lot(tmp_path, caplog):
    folder = tmp_path / "gone"
    folder.mkdir()
    path = str(folder / "h.csv")
    rec = HistoryRecord(path, ORIGIN)
    shutil.rmtree(folder)  # the disk's folder went away under a running server (with the record's lock file)
    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        rec.window("a", 0.0, 1.0, 1.0)
        deadline = time.monotonic() + 10
        while "could not write the load history" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "could not write the load history" in caplog.text and rec.writes == 0
    folder.mkdir()
    rec.window("a", 300.0, 2.0, 2.0)
    rec.close()
    assert rec.writes == 1 and list(read_history(path)["a"][1]) == [1.0, 2.0]


def test_a_record_file_that_is_not_the_history_is_refused_before_anything_starts(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text(f"model,window_start_s,avg,peak\na,{ORIGIN:.0f},1,2\n")
    with pytest.raises(InvalidArgumentError, match="exists and is not the --history file"):
        starting_history(ControllerConfig(history_record_path=str(other)))
    with pytest.raises(InvalidArgumentError, match="exists and is not the --history file"):
        starting_history(ControllerConfig(history_path=str(other),
                                          history_record_path=str(_copy(other, tmp_path / "mine.csv"))))
    assert other.read_text().count("\n") == 2  # untouched
    # the same file, by another spelling: continued
    hist = starting_history(ControllerConfig(history_path=str(other),
                                             history_record_path=str(tmp_path / "." / "other.csv")))
    assert list(hist["a"][1]) == [1.0]
    # a new file: recorded there, the history read from the other
    assert starting_history(ControllerConfig(history_path=str(other), history_record_path=str(tmp_path / "n.csv")))


def test_a_record_file_that_cannot_be_written_is_refused_naming_the_fix(tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist or is not writable"):
        starting_history(ControllerConfig(history_record_path=str(tmp_path / "no" / "h.csv")))
    with pytest.raises(InvalidArgumentError, match="is a directory") as e:
        starting_history(ControllerConfig(history_record_path=str(tmp_path)))
    # the Cluster's keyword beside the flag (found in review: a Cluster user was told of --record-history only)
    assert "--record-history (warmserve.Cluster: history_record_path=)" in str(e.value)


def test_the_restart_recipe_starts_before_its_file_exists_and_a_folder_is_named_as_one(tmp_path):
    """Found in review: `--history h.csv --record-history h.csv` (README's restart recipe, a service's fixed command
    line) refused to start until some run had recorded a window (300 s), its first start included; and a history
    path that is a folder was said not to exist."""
    h = str(tmp_path / "h.csv")
    assert starting_history(ControllerConfig(history_path=h, history_record_path=str(tmp_path / "." / "h.csv"))) \
        is None
    with pytest.raises(InvalidArgumentError, match="does not exist"):  # a history not recorded here: a typo
        starting_history(ControllerConfig(history_path=h, history_record_path=str(tmp_path / "new.csv")))
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        starting_history(ControllerConfig(history_path=h))
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        starting_history(ControllerConfig(history_path=str(tmp_path)))


def _copy(src, dst):
    dst.write_text(src.read_text())
    return dst


def test_the_serve_flag_and_a_config_files_key_set_the_record_file(tmp_path):
    import argparse

    from warmserve.controller import serve

    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    assert serve.build_config(p.parse_args(["--record-history", "~/h.csv"])).controller.history_record_path \
        == os.path.expanduser("~/h.csv")
    f = tmp_path / "c.yaml"
    f.write_text("models: [a]\ncontroller: {history_record_path: rec.csv}\n")
    assert serve.build_config(p.parse_args(["--config", str(f)])).controller.history_record_path \
        == str(tmp_path / "rec.csv")  # relative to the config file, as history_path


def test_a_window_that_began_before_the_measuring_did_is_left_out(tmp_path):
    """Found in review: the first window after a restart, measured in part and merged with the forecast, was
    written as measured (a fractional peak for a window the server saw idle) and read back at the next start."""
    path = str(tmp_path / "h.csv")
    rec = HistoryRecord(path, ORIGIN, started_unix_s=ORIGIN + 450.0)
    rec.window("a", 300.0, 0.137, 0.857)  # 300-600 s: begun 150 s before the start
    rec.window("a", 600.0, 2.0, 3.0)
    rec.close()
    starts, avg, peak = read_history(path)["a"]
    assert list(starts) == [ORIGIN + 600.0] and list(peak) == [3.0]


def test_a_json_record_path_is_refused_since_the_record_is_csv(tmp_path):
    """Found in review: `--history F --record-history F` with F a .json file wrote CSV into it, and the next start
    failed reading it as JSON."""
    with pytest.raises(InvalidArgumentError, match="give a .csv path") as e:
        starting_history(ControllerConfig(history_record_path=str(tmp_path / "load.json")))
    assert e.value.path == str(tmp_path / "load.json")


def test_the_days_the_controller_was_down_do_not_age_the_starting_history(tmp_path, caplog):
    """Found in review: started 15 days after its last row, the first window's rewrite dropped all of the starting
    history (30,240 rows) without a word, and the next start had nothing to forecast from. Now the starting rows
    are kept as if the controller had not been down: 14 days of windows in all, the drop said once."""
    path = str(tmp_path / "h.csv")
    started = ORIGIN + 3 * DAY_S
    seeds = np.arange(started - 35 * DAY_S, started - 15 * DAY_S, 3600.0)  # 20 days of hourly rows, 15 days old
    rec = HistoryRecord(path, ORIGIN, {"a": (seeds, np.ones(len(seeds)), np.ones(len(seeds)))},
                        started_unix_s=started)
    with caplog.at_level(logging.INFO, logger="warmserve.controller"):
        rec.window("a", 3 * DAY_S, 2.0, 2.0)
        rec.window("a", 3 * DAY_S + 300, 2.0, 2.0)
        rec.close()
    starts = read_history(path)["a"][0]
    kept = starts[starts < started]
    # the newest 14 days of the starting rows, less the 300 s measured since: 336 hourly rows (before: none)
    assert len(kept) == 14 * 24 and kept.max() == seeds.max(), (len(kept), kept.max() - seeds.max())
    assert list(starts[starts >= started]) == [started, started + 300]
    said = [r.getMessage() for r in caplog.records if "rows dropped" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"load history record {path}: {len(seeds) - len(kept)} rows"), said


def test_rows_of_one_start_are_written_back_as_the_policy_read_them(tmp_path):
    """Found in review: two CSV rows of one model and start (10/20 and 2/4) were read by the policy as their merge
    (avg 6, peak 20), and the record wrote back the one that sorted last alone."""
    path = str(tmp_path / "h.csv")
    with open(path, "w") as f:  # read as a start reads it: the reader makes the rows of one start one
        f.write(f"model,window_start_s,avg,peak\na,{ORIGIN:.0f},2,4\na,{ORIGIN:.0f},10,20\na,{ORIGIN + 300:.0f},1,1\n")
    start = starting_history(ControllerConfig(history_path=path, history_record_path=path))
    rec = HistoryRecord(path, ORIGIN, start)
    rec.window("a", 600.0, 1.0, 1.0)
    rec.close()
    starts, avg, peak = read_history(path)["a"]
    assert list(starts) == [ORIGIN, ORIGIN + 300, ORIGIN + 600] and avg[0] == 6.0 and peak[0] == 20.0


def test_the_history_read_at_start_is_said(tmp_path, caplog):
    """Found in review: a restart from its record file said nothing of what it read."""
    path = str(tmp_path / "h.csv")
    now = int(time.time())
    with open(path, "w") as f:
        f.write(f"model,window_start_s,avg,peak\na,{now - 7200},1,2\na,{now - 3600},1,2\nb,{now - 5400},1,1\n")
    with caplog.at_level(logging.INFO, logger="warmserve.controller"):
        starting_history(ControllerConfig(history_path=path, history_record_path=path))
    assert any(f"history {path}: 3 rows of 2 model(s) read, the newest from 1.0 h ago" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
