"""What the process-lifecycle tests read of a process: its state letter from /proc, and a wait for a condition."""

from __future__ import annotations

import time


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat ("S", "R", "Z" for a zombie, ...), or "reaped" once the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "reaped"


def wait_for(cond, timeout_s: float = 10.0, poll_s: float = 0.02) -> bool:
    """Whether ``cond()`` came true within ``timeout_s`` (checked every ``poll_s``)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
