"""Found in review: `warmserve simulate --policy-option window_s=0.01` was taken and grew without end (9.5 GB after
90 s on a 60 s replay), while `serve` refuses a window below 1 s (config.check_window, MIN_WINDOW_S): the simulated
policy keeps its history per window too. The simulator now refuses it as serve does, before any workload is built,
naming window_s and the floor (1 s, or --tick-s where longer). And `--gpus -8` suggested "e.g. 8 or 0", 0 itself
refused: the hint now names GPU counts that run."""

from __future__ import annotations

import pytest

from warmserve import cli
from warmserve.config import MIN_WINDOW_S
from warmserve.errors import InvalidArgumentError

BASE = ["simulate", "--workload", "paper-conv", "--models", "3", "--duration-s", "60", "--rate", "3",
        "--policy", "warmserve", "--no-search", "--quiet"]


def _never_built(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the workload was built: the window was taken")

    monkeypatch.setattr("warmserve.sim.presets.paper_workload", boom)
    monkeypatch.setattr("warmserve.workload.recipes.paper_workload", boom)


@pytest.mark.parametrize("flags,floor", [(["--policy-option", "window_s=0.01"], "1"),
                                         (["--policy-option", "window_s=0.5"], "1"),
                                         (["--policy-option", "window_s=3", "--tick-s", "5"], "5")])
def test_a_window_below_the_floor_exits_2_naming_window_s_and_the_floor(monkeypatch, capsys, flags, floor):
    _never_built(monkeypatch)
    assert cli.main([*BASE, *flags]) == 2
    err = capsys.readouterr().err
    assert "window_s" in err and f"at least {floor} s" in err and f"window_s={floor}" in err
    assert "Traceback" not in err


def test_the_floor_is_the_live_controllers_and_is_taken():
    from warmserve.sim.cli_checks import check_sim_window

    assert MIN_WINDOW_S == 1.0
    with pytest.raises(InvalidArgumentError) as e:
        check_sim_window(0.01, 1.0)
    assert e.value.key == "window_s" and e.value.floor_s == 1.0
    check_sim_window(1.0, 1.0)
    check_sim_window(300.0, 5.0)


@pytest.mark.parametrize("gpus", ["-8", "0", "-1"])
def test_a_gpu_count_below_1_is_refused_with_a_hint_that_runs(capsys, gpus):
    assert cli.main([*BASE[:1], "--workload", "servegen", "--gpus", gpus, "--no-search", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--gpus {gpus}" in err and "at least 1" in err
    hint = err.split("e.g.")[1]
    assert " 0" not in hint and "-" not in hint and "8" in hint
