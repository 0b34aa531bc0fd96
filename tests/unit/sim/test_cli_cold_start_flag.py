"""`warmserve simulate --cold-start-s` that is not a finite number >= 0 (found in review): inf was refused naming the
cost model's field ("CostModel.engine_start_s is inf"), NaN and -1 as "cold start of nan s", neither naming the
flag. Refused naming --cold-start-s, before any run."""

from __future__ import annotations

import pytest

from warmserve import cli


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "-inf"])
def test_a_cold_start_that_is_no_finite_number_of_seconds_is_refused_naming_the_flag(monkeypatch, capsys, value):
    def boom(*a, **k):
        raise AssertionError("the workload was built")

    monkeypatch.setattr("warmserve.workload.recipes._circular_stretch", boom)
    rc = cli.main(["simulate", f"--cold-start-s={value}", "--duration-s", "10", "--policy", "warmserve",
                   "--no-search", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert f"--cold-start-s {float(value):g}:" in err and "finite number of seconds >= 0" in err, err
    assert "engine_start_s" not in err and "CostModel" not in err, err
