"""`warmserve simulate` values the workload cannot take, refused naming the flag before the workload is built (found
in review): --history-days 100000 with a low --rate (inside the request budget) built a stretch of the Azure trace
per model and day for tens of minutes; --start-hour nan or -1 was refused as "start hour -1 ... runs past the end
of ServeGen's last day", naming no flag; --alpha -1000 overflowed the power-law split and was refused as "circular
stretch rate_rps=nan" (before that: "cannot convert float NaN to integer")."""

from __future__ import annotations

import re

import pytest

from warmserve import cli
from warmserve.errors import InvalidArgumentError
from warmserve.sim.cli_checks import MAX_AZURE_HISTORY_DAYS
from warmserve.workload.recipes import power_law_shares

RUN = ["--duration-s", "60", "--policy", "warmserve", "--no-search", "--quiet"]


def _refused(monkeypatch, capsys, *flags) -> str:
    def boom(*a, **k):
        raise AssertionError("the workload was built")

    monkeypatch.setattr("warmserve.workload.recipes._circular_stretch", boom)
    monkeypatch.setattr("warmserve.sim.presets.servegen_workload", boom)
    rc = cli.main(["simulate", *flags, *RUN])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    return err


@pytest.mark.parametrize("flags", [["--history-days", "100000", "--rate", "0.01"],
                                   ["--preset", "scale", "--workload", "paper-conv", "--history-days", "14"]])
def test_more_history_days_than_an_azure_workload_takes_are_refused(monkeypatch, capsys, flags):
    err = _refused(monkeypatch, capsys, *flags)
    days = flags[flags.index("--history-days") + 1]
    assert f"--history-days {days}:" in err and f"give --history-days {MAX_AZURE_HISTORY_DAYS} or fewer" in err, err


@pytest.mark.parametrize("hour", ["nan", "inf", "-1", "23.99"])
def test_a_servegen_start_hour_off_its_last_day_is_refused_naming_the_flag(monkeypatch, capsys, hour):
    err = _refused(monkeypatch, capsys, "--workload", "servegen", f"--start-hour={hour}")
    assert f"--start-hour {float(hour):g}:" in err and "give --start-hour between 0 and 23.98" in err, err


def test_an_alpha_that_overflows_the_split_is_refused_naming_the_flag(monkeypatch, capsys):
    err = _refused(monkeypatch, capsys, "--alpha=-1000")
    assert "--alpha -1000:" in err and "over 7 models" in err and "give --alpha -363 or more" in err, err
    assert "rate_rps" not in err, err


@pytest.mark.parametrize("n, alpha", [(7, -400.0), (2, -1100.0), (80, -1e6)])
def test_power_law_shares_refuse_an_exponent_that_overflows(n, alpha):
    with pytest.raises(InvalidArgumentError, match=re.escape(f"alpha {alpha:g}: (i+1)^-alpha overflows")):
        power_law_shares(n, alpha)
    assert power_law_shares(n, -363.0 if n == 7 else -100.0).sum() == pytest.approx(1.0)
