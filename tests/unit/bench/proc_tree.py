"""/proc helpers for the tests that end a benchmark by a signal and check what it left running. Not a test module."""

from __future__ import annotations


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (none once it has gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: an orphan's zombie waits on an init that may never reap it, and counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
