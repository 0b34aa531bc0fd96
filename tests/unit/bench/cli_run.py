"""Helpers for tests that run `warmserve` commands in-process through ``cli.main`` and check what they refuse
before any measurement. Not a test module."""

from __future__ import annotations

import pytest

from warmserve import cli


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    """Demo checkpoints a run writes go here, not into the machine's shared cache (autouse where imported)."""
    monkeypatch.setenv("WARMSERVE_HOME", str(tmp_path / "home"))


def run(argv, capsys) -> tuple[int, str, str]:
    """``warmserve ARGV`` in this process: (exit status, stdout, stderr)."""
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def never(what: str):
    """A stand-in for a step that must not be reached: the check came too late if it runs."""
    def fail(*a, **k):
        raise AssertionError(f"{what} ran: the check came too late")
    return fail
