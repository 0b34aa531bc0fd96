"""History files as users write them, from review: loads in the wrong unit (1e8 stalled every replan tick for 17 s,
1.7e308 overflowed the forecast to inf), a short row (a bare TypeError), gzip and Latin-1 files (a bare
UnicodeDecodeError naming no file), empty and header-only files and JSON named .JSON (accepted as no history), and
Excel's byte-order mark or spaces in the header (refused as if "model" were missing)."""

from __future__ import annotations

import gzip
import time

import numpy as np
import pytest

from warmserve.controller.history_file import read_history
from warmserve.errors import InvalidArgumentError
from warmserve.policy.history import MAX_HISTORY_LOAD, History

T0 = int(time.time()) - 2 * 86400


def _csv(tmp_path, text: str, name: str = "h.csv", encoding: str = "utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return str(p)


@pytest.mark.parametrize("avg", ["1e8", "1.7e308", "2e6"])
def test_a_load_past_any_cluster_is_refused_naming_the_unit(tmp_path, avg):
    path = _csv(tmp_path, f"model,window_start_s,avg,peak\na,{T0},{avg},{avg}\na,{T0 + 300},1,2\n")
    with pytest.raises(ValueError, match=r"implausible \(> 1e\+06\) load.*in-flight requests"):
        read_history(path)
    h = History(["a"], 300.0)
    with pytest.raises(InvalidArgumentError, match="past 1e\\+06"):
        h.load("a", [0.0], [float(avg)], [1.0])
    h.load("a", [0.0, 300.0], [MAX_HISTORY_LOAD, np.nan], [MAX_HISTORY_LOAD, 1.0])  # the bound, and NaN: taken


def test_a_short_row_names_its_row(tmp_path):
    path = _csv(tmp_path, f"model,window_start_s,avg,peak\na,{T0},1,2\na,{T0 + 300},1\n")
    with pytest.raises(ValueError, match="row 3: need model, window_start_s, avg, peak"):
        read_history(path)


def test_a_header_without_the_columns_names_what_it_lacks_and_has(tmp_path):
    """Found in review: a header a,b,c was reported at row 2 as lacking 'start_s', an alias nobody asked for."""
    path = _csv(tmp_path, f"a,b,c\nx,{T0},1\n")
    with pytest.raises(ValueError, match="header lacks model, window_start_s, avg, peak \\(it has a, b, c\\)"):
        read_history(path)
    path = _csv(tmp_path, f"model,start_s,avg\na,{T0},1\n")  # the alias start_s stands for window_start_s
    with pytest.raises(ValueError, match="header lacks peak \\(it has model, start_s, avg\\)"):
        read_history(path)


def test_gzip_and_latin1_files_are_refused_naming_the_file(tmp_path):
    gz = tmp_path / "h.csv.gz"
    gz.write_bytes(gzip.compress(f"model,window_start_s,avg,peak\na,{T0},1,2\n".encode()))
    with pytest.raises(InvalidArgumentError, match="gzip-compressed: decompress it"):
        read_history(str(gz))
    path = _csv(tmp_path, f"model,window_start_s,avg,peak\nmodèle,{T0},1,2\n", encoding="latin-1")
    with pytest.raises(ValueError, match="h.csv is not UTF-8 text"):
        read_history(path)


@pytest.mark.parametrize("text,name", [("", "empty.csv"), ("model,window_start_s,avg,peak\n", "header.csv"),
                                       ('{"a": {"window_start_s": [1], "avg": [1], "peak": [1]}}', "h.JSON"),
                                       ("{}", "empty.json")])
def test_a_file_with_no_rows_is_refused(tmp_path, text, name):
    path = _csv(tmp_path, text, name)
    with pytest.raises(ValueError, match="has no rows|names no model|Unix times"):
        read_history(path)


def test_a_byte_order_mark_and_spaces_in_the_header_are_read(tmp_path):
    path = _csv(tmp_path, f"\ufeffmodel, window_start_s, avg, peak\na,{T0},1,2\na,{T0 + 300},3,4\n")
    starts, avg, peak = read_history(path)["a"]
    assert list(starts) == [T0, T0 + 300] and list(avg) == [1, 3] and list(peak) == [2, 4]


def test_json_is_known_whatever_the_case_of_its_ending(tmp_path):
    path = _csv(tmp_path, f'{{"a": {{"window_start_s": [{T0}], "avg": [1.5], "peak": [2]}}}}', "h.JSON")
    assert list(read_history(path)["a"][1]) == [1.5]
