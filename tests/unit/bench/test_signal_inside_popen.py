"""A SIGTERM that comes inside ``subprocess.Popen``, after its fork and before it returns, still ends the child.
Found in CI: `calibrate --parallel`'s SIGTERM test saw a worker outlive the run: the SystemExit raised inside Popen,
the child never reached the list the clean-up ends, and ran on. Here the signal is sent from within Popen (a real
child already started), which is the race made certain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from warmserve.bench import calibrate
from warmserve.bench.exit_signals import exit_on_signals, signals_held

REAL_POPEN = subprocess.Popen


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def term_inside_popen(monkeypatch):
    """Popen starting a sleeping child, then receiving SIGTERM before it returns; the children it started."""
    started: list[subprocess.Popen] = []

    def popen(cmd, **kw):
        proc = REAL_POPEN([sys.executable, "-c", "import time; time.sleep(60)"], stdout=kw.get("stdout"),
                          stderr=kw.get("stderr"), text=kw.get("text", False))
        started.append(proc)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs at the next bytecode: here, before Popen returns
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen)
    yield started
    for p in started:  # should the code under test not end them
        if p.poll() is None:
            p.kill()
            p.wait()


def test_calibrate_parallel_ends_a_child_whose_popen_the_sigterm_cut(term_inside_popen):
    args = types.SimpleNamespace(parallel=2, threads=1, prefill_tokens="8", decode_batches="1", decode_steps=1,
                                 repeats=1, demo_dir="")
    with pytest.raises(SystemExit) as e:
        calibrate.measure_parallel(args, ["llama-20m"])
    assert e.value.code == 128 + signal.SIGTERM
    (child,) = term_inside_popen  # the first start was the last: the TERM ended the run there
    assert not _running(child.pid), "the child started inside the cut Popen outlived the run"


def test_a_signal_held_is_raised_when_the_hold_ends_and_not_before():
    reached = []
    with pytest.raises(SystemExit) as e:
        with exit_on_signals((signal.SIGTERM,)):
            with signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)
                reached.append("after the signal")
            reached.append("after the hold")
    assert e.value.code == 128 + signal.SIGTERM
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGTERM) is not None  # the earlier handler is back
