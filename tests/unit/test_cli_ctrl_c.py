"""`cli.main` and a Ctrl-C (KeyboardInterrupt), in-process: exit status 130 and one line, after the command's own
clean-up; a command that reports its interruption itself (`bench replay`) gets no second line, and its main still
raises KeyboardInterrupt for in-process callers. tests/integration/test_cli_interrupt_exit.py sends a real SIGINT."""

import argparse
import sys
import types

import pytest

from warmserve import cli
from warmserve.bench import replay as R


def _command(monkeypatch, main):
    """A command word `fake` whose module has ``main``."""
    mod = types.ModuleType("warmserve_fake_command")
    mod.add_arguments = lambda parser: None
    mod.main = main
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(cli.COMMANDS, ("fake",), (mod.__name__, "a stand-in command"))


def test_ctrl_c_is_130_and_one_line_after_the_commands_clean_up(monkeypatch, capsys):
    cleaned = []

    def main(args):
        try:
            raise KeyboardInterrupt
        finally:
            cleaned.append(True)  # a command's finally (servers stopped, results saved) runs before main's line

    _command(monkeypatch, main)
    assert cli.main(["fake"]) == 130
    assert cleaned == [True]
    assert capsys.readouterr().err == "warmserve fake: interrupted\n"


def test_ctrl_c_while_the_command_module_is_imported(monkeypatch, tmp_path, capsys):
    # a heavy import (torch) takes seconds: a Ctrl-C then is the same one line
    (tmp_path / "warmserve_fake_slow_import.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "warmserve_fake_slow_import", raising=False)
    monkeypatch.setitem(cli.COMMANDS, ("fake",), ("warmserve_fake_slow_import", "a stand-in command"))
    assert cli.main(["fake"]) == 130
    assert capsys.readouterr().err == "warmserve fake: interrupted\n"


def test_replay_reports_its_own_interruption_once(monkeypatch, tmp_path, capsys):
    def interrupted(args, run):
        run["policy"] = "warmserve"
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "_main", interrupted)
    assert cli.main(["bench", "replay", "--quiet", "--json", str(tmp_path / "r.json")]) == 130
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warmserve bench replay: interrupted during warmserve"), err
    # in-process, replay's own main still passes the Ctrl-C on (tests/unit/bench/test_replay_args.py relies on it)
    with pytest.raises(KeyboardInterrupt):
        R.main(_args())


def _args():
    p = argparse.ArgumentParser()
    R.add_arguments(p)
    return p.parse_args(["--quiet"])
