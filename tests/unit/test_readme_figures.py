"""The README's benchmark headlines quote their stored results: the forecast row's figures are read back from
bench/forecast's JSON. Found in review: the row kept figures of an earlier run (4.9% / 5.3% ...) after the tables
were re-run, and none of them was in any stored file."""

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _row(name: str) -> str:
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| [{name}]")]
    assert len(rows) == 1, rows
    return rows[0]


def test_the_forecast_headline_quotes_the_stored_means_and_medians():
    row = _row("forecast")
    quoted = [float(x) for x in re.findall(r"(\d+\.\d)%", row.split("|")[2])]
    want = []
    for name in ("results_poisson.json", "results.json"):  # the row's order: poisson, then cv
        summary = json.loads((ROOT / "bench/forecast" / name).read_text())["summary"]
        for group in ("strongly_periodic", "periodic"):
            for method in ("auto", "paper"):
                s = summary[group][method]
                want += [round(100 * s["peak_mre_mean"], 1), round(100 * s["peak_mre_median"], 1)]
    assert quoted == want, (quoted, want)
