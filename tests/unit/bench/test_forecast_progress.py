"""`warmserve bench forecast` says on stderr how far it got, a line per series (it printed nothing for ~43 s, then
the whole table); stdout stays the table alone."""

from __future__ import annotations

import csv
import gzip
import os
import shutil

from warmserve import cli
from warmserve.bench.forecast import default_traces

MODEL = "m-small"


def _one_model_traces(dst) -> str:
    """The vendored ServeGen files cut to one model: one series, so the run takes seconds."""
    src = default_traces()
    os.makedirs(dst)

    def cut(name: str, out_name: str) -> None:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(os.path.join(src, name), "rt", newline="") as f, \
                (gzip.open if out_name.endswith(".gz") else open)(os.path.join(dst, out_name), "wt", newline="") as g:
            r = csv.DictReader(f)
            w = csv.DictWriter(g, r.fieldnames)
            w.writeheader()
            w.writerows(row for row in r if row["model"] == MODEL)

    cut("servegen_model_rates_10min.csv", "servegen_model_rates_10min.csv")
    cut("servegen_client_windows_top.csv.gz", "servegen_client_windows.csv.gz")
    shutil.copy(os.path.join(src, "servegen_length_stats_6h.csv"), dst)
    return str(dst)


def test_a_progress_line_per_series_goes_to_stderr(tmp_path, capsys):
    traces = _one_model_traces(tmp_path / "traces")
    assert cli.main(["bench", "forecast", "--traces", traces, "--clients", "0", "--json",
                     str(tmp_path / "f.json")]) == 0
    out, err = capsys.readouterr()
    progress = [ln for ln in err.splitlines() if ln.startswith("forecast: [")]
    assert len(progress) == 1 and progress[0].startswith(f"forecast: [1/1] {MODEL}:"), err
    assert "forecast: [" not in out and out.startswith("peak MRE per series") and MODEL in out
