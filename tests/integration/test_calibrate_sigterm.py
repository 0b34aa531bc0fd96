"""A SIGTERM to `warmserve calibrate --parallel` ends its worker processes and removes its temp dir. Found in review:
the worker processes ran on, reparented to init, and the temp dir holding their profiles was left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: how long the calibration may take to measure alone and start its workers
START_TIMEOUT_S = 60.0


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an orphan's zombie waits on an init that may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_sigterm_to_a_parallel_calibration_leaves_no_worker_and_no_temp_dir(tmp_path):
    from warmserve.engine.demo import write_demo_models

    # the demo model where the other tests write it, already written: a folder of the test's own drew and wrote
    # llama-20m afresh each run (2.5 s of CPU); nothing here is about the checkpoint
    demo = os.path.dirname(write_demo_models(None, ["llama-20m"])["llama-20m"])
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cmd = [sys.executable, "-m", "warmserve", "calibrate", "--out", str(tmp_path / "p.json"), "--models", "llama-20m",
           "--demo-dir", str(demo), "--parallel", "2", "--no-fresh-engine", "--repeats", "1", "--prefill-tokens", "8",
           "--decode-batches", "1", "--decode-steps", "1", "--decode-context-tokens", "0"]
    proc = subprocess.Popen(cmd, env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(kids) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            kids = _children(proc.pid)
        assert len(kids) == 2, f"no workers started in {START_TIMEOUT_S:.0f} s (exit {proc.poll()})"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        left = [k for k in kids if _running(k)]
        assert not left, f"workers {left} outlived the calibration"
        assert not list(tmp.iterdir()), list(tmp.iterdir())
        assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]  # a SystemExit, its finally clauses run
    finally:
        for k in _children(proc.pid) + kids:  # this test's own processes, should the calibration not end them
            if _running(k):
                os.kill(k, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
