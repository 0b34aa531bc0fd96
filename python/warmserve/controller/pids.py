"""Whether a process still runs, read from /proc: one answer for the controller's restarts (was it the controller's
kill?) and for the local workers' CURVE key files (is a started worker still to say Hello?)."""

from __future__ import annotations

import signal
import subprocess

#: include/linux/sched.h: set as a task starts to exit (do_exit), before its memory is freed.
_PF_EXITING = 0x4
_SIGKILL_PENDING = 1 << (signal.SIGKILL - 1)  # its bit in /proc/PID/status's SigPnd and ShdPnd masks


def pid_running(pid: int | None) -> bool:
    """Whether process ``pid`` runs, from /proc: not ended nor a zombie, not exiting (PF_EXITING), and no SIGKILL
    pending; True where that cannot be read. Found in a soak: a worker SIGKILLed from elsewhere, its 1 GiB pool
    mapped, took a while to exit, and its connection's end reached the controller while it still read as running,
    so 4 of 6 such kills were marked and logged as the controller's."""
    if not pid:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()  # state, ppid, pgrp, session, tty, tpgid, flags, ...
        if fields[0] in (b"Z", b"X") or int(fields[6]) & _PF_EXITING:
            return False
        with open(f"/proc/{pid}/status", "rb") as f:
            return not any(line.startswith((b"SigPnd:", b"ShdPnd:")) and int(line.split()[1], 16) & _SIGKILL_PENDING
                           for line in f)
    except FileNotFoundError:
        return False
    except (OSError, IndexError, ValueError):
        return True


def exit_status(proc: subprocess.Popen | None, wait_s: float = 0.2) -> int | None:
    """A local worker's exit status, waiting up to ``wait_s`` for a process whose connection has just closed; None
    while it runs on, or for a remote worker (no process here)."""
    try:
        return None if proc is None else proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        return None
