"""`warmserve simulate --duration-s` far below a second (found in review): the Azure recipes look for arrivals inside
the replay by reading more and more copies of the trace (``workload.recipes._circular_stretch``), so 1e-4 s took
18 s, 1e-5 s over two minutes and 1e-9 s hours before the run failed with "holds no request". Refused at once."""

from __future__ import annotations

import pytest

from warmserve import cli


def _never_stretched(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the workload was built")

    monkeypatch.setattr("warmserve.workload.recipes._circular_stretch", boom)


@pytest.mark.parametrize("workload", ["paper-conv", "paper-code"])
@pytest.mark.parametrize("duration", ["1e-9", "0.0001", "0.5"])
def test_a_replay_under_a_second_is_refused_before_the_workload_is_built(monkeypatch, capsys, workload, duration):
    _never_stretched(monkeypatch)
    rc = cli.main(["simulate", "--workload", workload, "--policy", "warmserve", "--no-search", "--quiet",
                   "--duration-s", duration])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"--duration-s {float(duration):g}" in err and "--duration-s 1 or more" in err, err


def test_a_one_second_replay_still_runs(capsys):
    rc = cli.main(["simulate", "--workload", "paper-conv", "--models", "2", "--rate", "24", "--history-days", "0",
                   "--policy", "warmserve", "--no-search", "--quiet", "--duration-s", "1"])
    assert rc == 0, capsys.readouterr().err
