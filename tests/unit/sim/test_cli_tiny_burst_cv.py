"""`warmserve simulate --burst-cv` near 0 (found in review): the Gamma shape 1/cv^2 overflowed, so 1e-160 failed after
the workload's draws with "arrival_s nan" naming no flag and 1e-300 with a ZeroDivisionError traceback. Refused
before the workload is built, naming the flag and the smallest CV taken."""

from __future__ import annotations

import pytest

from warmserve import cli
from warmserve.sim.cli_checks import MIN_BURST_CV


@pytest.mark.parametrize("cv", ["1e-300", "1e-160", "1e-9"])
def test_a_burst_cv_too_close_to_0_is_refused_naming_the_flag(monkeypatch, capsys, cv):
    def boom(*a, **k):
        raise AssertionError("the workload was built")

    monkeypatch.setattr("warmserve.workload.recipes.regamma", boom)
    rc = cli.main(["simulate", "--workload", "paper-conv", "--policy", "warmserve", "--no-search", "--quiet",
                   "--duration-s", "60", "--burst-cv", cv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"--burst-cv {float(cv):g}" in err and f"at least {MIN_BURST_CV:g}" in err, err


def test_the_smallest_burst_cv_still_runs(capsys):
    rc = cli.main(["simulate", "--workload", "paper-conv", "--models", "2", "--rate", "4", "--history-days", "0",
                   "--policy", "warmserve", "--no-search", "--quiet", "--duration-s", "60",
                   "--burst-cv", f"{MIN_BURST_CV:g}"])
    assert rc == 0, capsys.readouterr().err
