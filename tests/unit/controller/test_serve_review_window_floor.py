"""Found in review: the forecast window had no lower bound, and the controller's load history holds every window
of a week per model (controller/clock.py CLOCK_DAYS_BACK): `serve --window-s 0.01` took 2.4 GiB for one model, and
0.001 would exhaust memory. A live window below 1 s, or below the policy loop's tick, is now refused naming
window_s and the floor; `warmserve simulate` refuses the same (tests/unit/sim/test_cli_review_window_floor.py)."""

from __future__ import annotations

import argparse

import pytest

from warmserve.config import ControllerConfig
from warmserve.config_file import load_config
from warmserve.controller import serve
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig


def parse(*argv):
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("flags", [("--window-s", "0.01"), ("--policy-option", "window_s=0.001"),
                                   ("--window-s", "0.5")])
def test_a_window_below_the_floor_is_refused_by_serve(flags):
    with pytest.raises(InvalidArgumentError, match=r"window_s must be at least 1 s .*got 0\.0?0?[15]") as e:
        serve.build_config(parse(*flags))
    assert e.value.key == "window_s" and e.value.floor_s == 1.0


def test_the_cli_exits_2_naming_the_flag(capsys, monkeypatch):
    from warmserve import cli

    async def no_server(*a, **k):
        raise AssertionError("a window of 0.01 s was taken: the server started")

    monkeypatch.setattr(serve, "serve", no_server)
    assert cli.main(["serve", "--window-s", "0.01", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "window_s must be at least 1 s" in err and "--window-s" in err and "Traceback" not in err


def test_a_config_file_window_below_the_floor_or_the_tick_is_refused_and_the_floor_is_taken(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[policy]\nwindow_s = 0.1\n")
    with pytest.raises(InvalidArgumentError, match="window_s must be at least 1 s"):
        load_config(str(f))
    f.write_text("[controller]\ntick_s = 2.0\n[policy]\nwindow_s = 1\n")
    with pytest.raises(InvalidArgumentError, match=r"window_s must be at least 2 s .*tick_s = 2 s"):
        load_config(str(f))
    # the floor itself, and PolicyConfig alone (the CLIs check the floor, each against its own tick)
    assert ControllerConfig(policy_config=PolicyConfig(window_s=1.0)).policy_config.window_s == 1.0
    assert serve.build_config(parse("--window-s", "5")).controller.policy_config.window_s == 5.0
    assert PolicyConfig(window_s=0.5).window_s == 0.5


def test_a_tick_over_a_day_is_not_answered_with_an_impossible_window():
    """Found in review: `simulate --tick-s 1e9` was told "window_s=1e+09 or more that divides 86400"."""
    from warmserve.config import check_window

    with pytest.raises(InvalidArgumentError) as e:
        check_window(300.0, 1e9)
    assert "Fix: a tick_s below a day (1e+09 s leaves no window that divides one" in str(e.value)
    with pytest.raises(InvalidArgumentError) as e:
        check_window(0.5, 0.2)
    assert "tick_s below a day" not in str(e.value)
