"""`warmserve bench forecast`, from a review: the client series are those with traffic on at least 13 of the 14
days, as bench/forecast/README.md says (the code counted 13 x 144 busy 10-minute windows instead, and left out
clients that pause for hours each day); no fit for the window past the data, which evaluate() threw away (one a
method and series, ~10% of the fit time, counted in fit_s); and a non-finite ``--periodic-acf`` is refused."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest

from warmserve import cli
from warmserve.bench import forecast as B
from warmserve.policy import forecast as F


def _traces(tmp_path) -> str:
    """m-small at 100 req/s throughout, and three clients: c1 (the largest) busy 3 windows a day on all 14
    days, c2 busy all day on 12 days only, c3 busy every window at a low rate."""
    n = B.DAYS * B.PERIOD
    d = tmp_path / "traces"
    d.mkdir()
    with open(d / "servegen_model_rates_10min.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "t_s", "total_rate_rps"])
        w.writerows(["m-small", i * B.WINDOW_S, 100.0] for i in range(n))
    with gzip.open(d / "servegen_client_windows.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "client_id", "t_s", "rate_rps", "cv"])
        for i in range(n):
            day, slot = divmod(i, B.PERIOD)
            if slot < 3:
                w.writerow(["m-small", 1, i * B.WINDOW_S, 5000.0, 1.0])
            if day < 12:
                w.writerow(["m-small", 2, i * B.WINDOW_S, 20.0, 1.0])
            w.writerow(["m-small", 3, i * B.WINDOW_S, 1.0, 1.0])
    with open(d / "servegen_length_stats_6h.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "out_mean", "expected_requests_all_clients"])
        w.writerow(["m-small", 15.0, 1000.0])
    return str(d)


def test_clients_are_picked_by_busy_days_not_busy_windows(tmp_path):
    series, _ = B.load_series(_traces(tmp_path), 16)
    clients = [k for k in series if "." in k]
    assert clients == ["m-small.c1", "m-small.c3"], clients  # by volume; c2 is busy on 12 days only


def test_evaluate_makes_no_fit_past_the_data(monkeypatch):
    origins = []
    real = F.fit_state
    monkeypatch.setattr(F, "fit_state", lambda *a, **k: origins.append((a[0], a[3])) or real(*a, **k))
    n = B.DAYS * B.PERIOD
    y = 20 + 10 * np.sin(np.arange(n) * 2 * np.pi / B.PERIOD) + np.random.default_rng(0).normal(0, 2, n)
    preds, _ = B.evaluate(y, n - B.EVAL_DAYS * B.PERIOD)
    assert max(r for _, r in origins) < n
    for m in ("holt-winters", "stl"):  # one refit a day of origins: 7 evaluated + 2 for the selector
        assert sum(k == m for k, _ in origins) == B.EVAL_DAYS + B.SELECT_DAYS
        assert len(preds[m]) == n and not np.isnan(preds[m][n - 1])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_periodic_acf_is_refused_naming_the_flag(tmp_path, capsys, value):
    rc = cli.main(["bench", "forecast", "--traces", str(tmp_path), "--clients", "0", f"--periodic-acf={value}"])
    err = capsys.readouterr().err
    assert rc == 2 and "--periodic-acf" in err, err
