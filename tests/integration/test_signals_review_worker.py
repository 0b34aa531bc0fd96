"""`warmserve worker` and SIGHUP. Found in review: a worker started from a terminal or an ssh session was killed on
the spot when that closed (SIGHUP's default action: exit status -1, no clean-up, its requests in flight lost); now
SIGHUP stops it as SIGTERM does, and a worker started under `nohup` (SIGHUP ignored) keeps ignoring it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def _worker(tmp_path, ignore_hup: bool) -> subprocess.Popen:
    def preexec():
        if ignore_hup:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup(1) does

    proc = subprocess.Popen([sys.executable, "-m", "warmserve", "worker", "--bind", "tcp://127.0.0.1:0", "--device",
                             "cpu", "--memory-gib", "0.25", "--threads", "1"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec,
                            env=dict(os.environ, WARMSERVE_HOME=str(tmp_path)), start_new_session=True)
    line = proc.stderr.readline()  # its banner, once it serves
    assert b"serving at" in line, line + proc.stderr.read()
    return proc


def test_sighup_stops_a_worker_as_sigterm_does(tmp_path):
    proc = _worker(tmp_path, ignore_hup=False)
    try:
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(30) == 0
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_worker_under_nohup_outlives_sighup(tmp_path):
    proc = _worker(tmp_path, ignore_hup=True)
    try:
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
