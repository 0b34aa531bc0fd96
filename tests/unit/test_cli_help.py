"""The command line a first-time user meets: help for every command word, and what `serve --help` says."""

import pytest

from warmserve import cli


@pytest.mark.parametrize("group,sub", [("bench", "switch"), ("models", "demo")])
def test_a_command_group_lists_its_subcommands(group, sub, capsys):
    for argv in ([group, "--help"], [group, "-h"]):
        assert cli.main(argv) == 0
        out = capsys.readouterr().out
        assert f"usage: warmserve {group} SUBCOMMAND" in out and f"  {sub} " in out
    # no subcommand is a usage error, as argparse has a required one (found in review: exit 0, so a script that
    # lost its subcommand went on as if it had run)
    assert cli.main([group]) == 2
    err = capsys.readouterr().err
    assert f"'{group}' needs a subcommand" in err and f"  {sub} " in err


def test_no_command_is_exit_2_and_version_is_printed(capsys):
    from importlib.metadata import version

    assert cli.main([]) == 2
    assert "no command given" in capsys.readouterr().err
    for flag in ("--version", "-V"):
        assert cli.main([flag]) == 0
        assert capsys.readouterr().out.strip() == f"warmserve {version('warmserve')}"


def test_an_unknown_subcommand_is_exit_2_with_the_groups_list(capsys):
    assert cli.main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'bench nope'" in err and "switch" in err


def test_subcommand_help_still_reaches_its_parser(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["models", "demo", "--help"])
    assert e.value.code == 0 and "--out" in capsys.readouterr().out


def test_serve_help_documents_log_level_and_the_access_log(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--log-level {DEBUG,INFO,WARNING,ERROR,CRITICAL}" in out and "access-log line per HTTP request" in out


def test_log_level_is_case_insensitive_and_checked():
    import argparse

    from warmserve.controller import serve

    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    assert p.parse_args(["--log-level", "warning"]).log_level == "WARNING"
    with pytest.raises(SystemExit):
        p.parse_args(["--log-level", "loud"])
