"""`warmserve bench forecast` scores every method on the same windows: those with an actual value where every method
has a forecast (found in review: each method was scored where it had a forecast, and `seasonal-naive`, which has
none where the same slot yesterday is missing, left out the hard windows right after each gap in the data: m-mid
876 of 930, m-small 953 of 971); the number of windows scored is in the JSON and in the table."""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest

from warmserve import cli
from warmserve.bench import forecast as B
from warmserve.policy.forecast import mean_relative_error

GAP_DAY, GAP_SLOTS = 9, range(50, 56)  # a hole in the evaluation week: seasonal-naive has no forecast a day later


def _traces(tmp_path) -> str:
    """m-small with a daily rhythm, noise and one 6-window gap (rate 0: missing data) on day 9; no client."""
    n = B.DAYS * B.PERIOD
    t = np.arange(n)
    rate = 100 + 40 * np.sin(2 * np.pi * t / B.PERIOD) + np.random.default_rng(0).normal(0, 8, n)
    rate[[GAP_DAY * B.PERIOD + s for s in GAP_SLOTS]] = 0.0
    d = tmp_path / "traces"
    d.mkdir()
    with open(d / "servegen_model_rates_10min.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "t_s", "total_rate_rps"])
        w.writerows(["m-small", i * B.WINDOW_S, rate[i]] for i in range(n))
    with gzip.open(d / "servegen_client_windows.csv.gz", "wt", newline="") as f:
        csv.writer(f).writerow(["model", "client_id", "t_s", "rate_rps", "cv"])
    with open(d / "servegen_length_stats_6h.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "out_mean", "expected_requests_all_clients"])
        w.writerow(["m-small", 15.0, 1000.0])
    return str(d)


def test_every_method_is_scored_on_the_same_windows_of_a_series_with_a_gap(tmp_path, monkeypatch, capsys):
    seen = []  # the forecasts main() scores, (target, preds), avg first then peak
    real = B.evaluate

    def recording(y, start):
        preds, fit_s = real(y, start)
        seen.append((y, dict(preds)))
        return preds, fit_s

    monkeypatch.setattr(B, "evaluate", recording)
    out = tmp_path / "f.json"
    assert cli.main(["bench", "forecast", "--traces", _traces(tmp_path), "--clients", "0", "--dispersion", "poisson",
                     "--json", str(out)]) == 0
    row = json.loads(out.read_text())["series"][0]
    n = B.DAYS * B.PERIOD
    start = n - B.EVAL_DAYS * B.PERIOD
    (avg, pa), (peak, pp) = seen

    def common(target, preds):
        ok = ~np.isnan(target[start:]) & (target[start:] > 0)
        for m in B.ALL_METHODS:
            ok &= ~np.isnan(preds[m][start:])
        return ok

    have = ~np.isnan(peak[start:]) & (peak[start:] > 0)
    on, a_on = common(peak, pp), common(avg, pa)
    lost = len(GAP_SLOTS)
    assert have.sum() == B.EVAL_DAYS * B.PERIOD - lost and on.sum() == have.sum() - lost  # the setting
    for m in B.ALL_METHODS:
        got, p = row["methods"][m], np.where(on, pp[m][start:], np.nan)
        assert got["peak_mre"] == pytest.approx(mean_relative_error(p, peak[start:]), rel=1e-9), (m, got)
        assert got["peak_wape"] == pytest.approx(B.wape(p, peak[start:]), rel=1e-9), (m, got)
        a = np.where(a_on, pa[m][start:], np.nan)
        assert got["avg_mre"] == pytest.approx(mean_relative_error(a, avg[start:]), rel=1e-9), (m, got)
    n_on = int(on.sum())
    assert row["windows_scored"] == {"peak_mre": n_on, "avg_mre": int(a_on.sum()), "peak_wape": n_on}
    table = capsys.readouterr().out
    line = next(ln for ln in table.splitlines() if ln.startswith("m-small "))
    assert str(n_on) in line.split(), line
