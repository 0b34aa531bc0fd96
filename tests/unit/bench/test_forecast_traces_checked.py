"""`warmserve bench forecast --traces DIR` checks the times and cells of the files it reads (found in review): times
in milliseconds dropped all but 3 windows silently (exit 0, a table of nan%, every series "strongly periodic"), a
negative t_s wrapped to index -1 and overwrote the last window, and one blank cell gave a bare ValueError with no
file or line. Files cut from the vendored data to m-small."""

from __future__ import annotations

import csv
import gzip
import os

import numpy as np
import pytest

from warmserve.bench import forecast as B
from warmserve.errors import InvalidArgumentError

MODEL = "m-small"
RATES, WINDOWS = "servegen_model_rates_10min.csv", "servegen_client_windows.csv.gz"
STATS = "servegen_length_stats_6h.csv"


def _traces(tmp_path, rates=None, windows=None, stats=None) -> str:
    """m-small's rows of the vendored files; ``rates``/``windows``/``stats`` edit the list of row dicts."""
    src, dst = B.default_traces(), tmp_path / "traces"
    os.makedirs(dst)
    for name, out, edit in ((RATES, RATES, rates), ("servegen_client_windows_top.csv.gz", WINDOWS, windows),
                            (STATS, STATS, stats)):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(os.path.join(src, name), "rt", newline="") as f:
            r = csv.DictReader(f)
            fields, rows = r.fieldnames, [row for row in r if row["model"] == MODEL]
        if edit:
            edit(rows)
        with (gzip.open if out.endswith(".gz") else open)(dst / out, "wt", newline="") as g:
            w = csv.DictWriter(g, fields)
            w.writeheader()
            w.writerows(rows)
    return str(dst)


def _ms(rows):
    for r in rows:
        r["t_s"] = str(int(float(r["t_s"])) * 1000)


def test_the_vendored_files_still_load():
    series, out_tokens = B.load_series(B.default_traces(), 16)
    assert {"m-large", "m-mid", "m-small"} <= set(series) and set(out_tokens) == set(B.PROFILES)
    for name in ("m-large", "m-mid", "m-small"):  # every window present but the gaps (m-mid's 102 the most)
        assert np.isnan(series[name]["rate"]).sum() <= 102


def test_more_clients_than_the_traces_hold_is_said(capsys):
    """Found in review: --clients 100000 ran on the clients there are, unsaid."""
    series, _ = B.load_series(B.default_traces(), 100000)
    n = len(series) - 3  # beside the three models
    assert 0 < n < 100000
    assert f"--clients 100000: the traces hold {n} clients busy on at least" in capsys.readouterr().err


def test_rates_in_milliseconds_are_refused_naming_file_and_line(tmp_path):
    d = _traces(tmp_path, rates=_ms)
    # 600000 and 1200000 fall inside the 14 days (1209600 s): the first past them is the third row, on line 5
    with pytest.raises(InvalidArgumentError, match=r"line 5, column t_s: 1800000 is not a window start before "
                                                   r"1209600 s.* past .*milliseconds") as e:
        B.load_series(d, 0)
    assert os.path.join(d, RATES) in str(e.value)


def test_a_negative_window_start_is_refused_not_wrapped_to_the_last_window(tmp_path):
    d = _traces(tmp_path, rates=lambda rows: rows.append(dict(rows[0], t_s="-600", total_rate_rps="99999")))
    with pytest.raises(InvalidArgumentError, match=rf"line {B.DAYS * B.PERIOD + 2}, column t_s: -600"):
        B.load_series(d, 0)


def test_a_window_start_off_the_10_minute_grid_is_refused(tmp_path):
    d = _traces(tmp_path, rates=lambda rows: rows[5].update(t_s="3300"))
    with pytest.raises(InvalidArgumentError, match=r"line 7, column t_s: 3300.* multiple of 600"):
        B.load_series(d, 0)


def test_client_windows_in_milliseconds_are_refused(tmp_path):
    d = _traces(tmp_path, windows=_ms)
    with pytest.raises(InvalidArgumentError, match=r"column t_s: .*milliseconds") as e:
        B.load_series(d, 0)
    assert os.path.join(d, WINDOWS) in str(e.value)


def test_a_model_with_most_of_its_windows_missing_is_refused(tmp_path):
    d = _traces(tmp_path, rates=lambda rows: rows.__delitem__(slice(5 * B.PERIOD, None)))
    with pytest.raises(InvalidArgumentError, match=rf"{MODEL} has data in {5 * B.PERIOD} of the "
                                                   rf"{B.DAYS * B.PERIOD} .*milliseconds"):
        B.load_series(d, 0)


@pytest.mark.parametrize("which, col, line", [("rates", "total_rate_rps", 5), ("windows", "rate_rps", 5),
                                             ("stats", "expected_requests_all_clients", 3)])
def test_a_blank_cell_names_file_line_and_column(tmp_path, which, col, line):
    d = _traces(tmp_path, **{which: lambda rows: rows[line - 2].update({col: ""})})
    with pytest.raises(InvalidArgumentError, match=rf"line {line}, column {col}: '' is not"):
        B.load_series(d, 0)

