"""ServeGen's loaders check the window times and cells of the files they read (found in review): client windows
with t_s in milliseconds put every request into one 10-minute window (72k requests in 600 s where 10 rps was
asked), a negative t_s loaded as it was, and one blank cell of the model rates file gave a bare
``ValueError: could not convert string to float: ''`` with no file or line. Files built from the vendored data."""

from __future__ import annotations

import csv
import gzip

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload import servegen as sg, servegen_workload
from warmserve.workload.data import data_path


def _vendored(name: str) -> tuple[list[str], list[dict]]:
    opener = gzip.open if name.endswith(".gz") else open
    with opener(data_path(name), "rt", newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames), list(r)


def _write(path, fields, rows) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _client_rows(model="m-small", n=300) -> tuple[list[str], list[dict]]:
    fields, rows = _vendored("servegen_client_windows_top.csv.gz")
    return fields, [r for r in rows if r["model"] == model][:n]


def test_client_windows_in_milliseconds_are_refused_naming_file_and_line(tmp_path):
    fields, rows = _client_rows()
    for r in rows:
        r["t_s"] = str(int(r["t_s"]) * 1000)
    path = _write(tmp_path / "windows.csv", fields, rows)
    bad = next(i for i, r in enumerate(rows) if int(r["t_s"]) >= 14 * 86400) + 2  # its line in the file
    with pytest.raises(InvalidArgumentError, match=rf"line {bad}, column t_s: .*m-small.*milliseconds") as e:
        sg.load_client_windows(path)
    assert path in str(e.value)
    with pytest.raises(InvalidArgumentError, match="milliseconds"):  # the recipe's path= reaches the same check
        servegen_workload(1, models=("m-small",), path=path, total_rate_rps=10.0, history_days=0, duration_s=600)


def test_a_negative_client_window_start_is_refused(tmp_path):
    fields, rows = _client_rows()
    rows[3]["t_s"] = "-600"
    path = _write(tmp_path / "windows.csv", fields, rows)
    with pytest.raises(InvalidArgumentError, match=r"line 5, column t_s: -600 is not a window start >= 0") as e:
        sg.load_client_windows(path)
    assert path in str(e.value)


def test_client_windows_of_a_model_the_rates_file_does_not_know_keep_their_own_times(tmp_path):
    fields, rows = _client_rows()
    for r in rows:
        r["model"] = "custom"
        r["t_s"] = str(int(r["t_s"]) + 100 * 86400)
    cw = sg.load_client_windows(_write(tmp_path / "windows.csv", fields, rows))
    assert min(float(c.t_s.min()) for c in cw.values()) >= 100 * 86400


def _rates(tmp_path, edit) -> str:
    fields, rows = _vendored("servegen_model_rates_10min.csv")
    edit(rows)
    return _write(tmp_path / "rates.csv", fields, rows)


def test_a_blank_cell_of_the_rates_file_names_file_line_and_column(tmp_path):
    path = _rates(tmp_path, lambda rows: rows[3].update(total_rate_rps=""))
    with pytest.raises(InvalidArgumentError, match=r"line 5, column total_rate_rps: '' is not a rate") as e:
        sg.data_gaps(path)
    assert path in str(e.value)
    with pytest.raises(InvalidArgumentError, match=r"line 5, column total_rate_rps"):
        sg.load_model_rates(path)


@pytest.mark.parametrize("t_s, want", [("-600", "a window start >= 0"),
                                       ("900", "a multiple of 600 s"), ("nan", "a window start")])
def test_bad_window_starts_of_the_rates_file_are_refused_by_line(tmp_path, t_s, want):
    path = _rates(tmp_path, lambda rows: rows[3].update(t_s=t_s))
    with pytest.raises(InvalidArgumentError, match=rf"line 5, column t_s: .*{want}") as e:
        sg.data_spans(path)
    assert path in str(e.value)


def test_the_vendored_files_pass_every_check():
    rates = sg.load_model_rates()
    assert set(rates) == {"m-large", "m-mid", "m-small", "mm-image", "deepseek-r1"}
    assert all(len(t) == 2016 for m, (t, _, _) in rates.items() if m in sg.LANGUAGE_MODELS)
    cw = sg.load_client_windows()
    assert {c.model for c in cw.values()} == set(rates)
    spans = sg.data_spans()
    assert all(spans[c.model][0] <= c.t_s.min() and c.t_s.max() < spans[c.model][1] for c in cw.values())
