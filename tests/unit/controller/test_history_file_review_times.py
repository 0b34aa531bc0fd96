"""History files read at start (controller/history_file.py), from a review of the forecaster's inputs: rows a few
hours ahead of now (a file of local times written as Unix seconds put the daily burst 9 h off) were read with no
word; rows more than a day ahead were refused as if they were no Unix times ("none ahead of now", though a day ahead
passes); a file cut short mid-row was told of as a bad cell, naming a column 'start_s' no one wrote; two CSV rows of
one model and start were merged with no word (the JSON form refuses them)."""

from __future__ import annotations

import logging
import time

import pytest

from warmserve.controller.history_file import read_history
from warmserve.errors import InvalidArgumentError

HEADER = "model,window_start_s,avg,peak\n"


def test_rows_ahead_of_now_are_warned_of_and_read(tmp_path, caplog):
    now = int(time.time())
    (tmp_path / "h.csv").write_text(HEADER + f"a,{now - 600},1,2\na,{now + 9 * 3600},3,4\n")
    caplog.set_level(logging.WARNING)
    starts, avg, _ = read_history(str(tmp_path / "h.csv"))["a"]
    assert list(avg) == [1.0, 3.0]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "1 window(s) start after now (the newest 9.0 h ahead)" in said[0], said


def test_rows_more_than_a_day_ahead_are_refused_saying_so(tmp_path):
    now = int(time.time())
    (tmp_path / "h.csv").write_text(HEADER + f"a,{now - 600},1,2\na,{now + 2 * 86400},3,4\na,{now + 50 * 3600},3,4\n")
    with pytest.raises(InvalidArgumentError) as e:
        read_history(str(tmp_path / "h.csv"))
    assert "2 window(s) starting more than a day ahead of now (the newest 50.0 h ahead)" in str(e.value)
    assert "Fix: delete those rows" in str(e.value) and "none ahead" not in str(e.value)


@pytest.mark.parametrize("tail", [",1", ",", "\x00" * 16000])
def test_a_file_cut_short_says_so(tmp_path, tail):
    now = int(time.time())
    (tmp_path / "h.csv").write_text(HEADER + f"a,{now - 900},1,2\na,{now - 600},1,2\nb{tail}")
    with pytest.raises(InvalidArgumentError) as e:
        read_history(str(tmp_path / "h.csv"))
    message = str(e.value)
    assert "row 4:" in message and "cut short; delete its last line" in message, message
    assert "'start_s'" not in message and len(message) < 600, message


def test_a_bad_row_in_the_middle_is_not_called_cut_short(tmp_path):
    now = int(time.time())
    (tmp_path / "h.csv").write_text(HEADER + f"a,{now - 900},x,2\na,{now - 600},1,2\n")
    with pytest.raises(InvalidArgumentError) as e:
        read_history(str(tmp_path / "h.csv"))
    assert "row 2:" in str(e.value) and "cut short" not in str(e.value)


def test_csv_rows_of_one_start_are_warned_of(tmp_path, caplog):
    now = int(time.time())
    (tmp_path / "h.csv").write_text(HEADER + f"a,{now - 600},10,20\na,{now - 600},2,4\nb,{now - 600},1,1\n")
    caplog.set_level(logging.WARNING)
    read_history(str(tmp_path / "h.csv"))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "model 'a' has 1 window(s) given more than once" in said[0], said
