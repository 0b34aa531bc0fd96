"""A draining local worker whose connection is seen gone while a request's end is still unread on this side (found in
CI under load, `integration/test_metrics_under_faults.py`: a rolling restart by SIGTERM read as a lost worker, its
last answers still in the socket when the send failed). Its exit status decides: 0 is its drain finished, a planned
leave; anything else, or a process still running, is a loss, as before."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from warmserve.controller.workers import WorkerHub, WorkerRecord


def _draining(proc: subprocess.Popen) -> WorkerRecord:
    w = WorkerRecord("w0", b"w0", "cpu", proc.pid, 1 << 30, 1 << 21, "h", proc=proc)
    w.draining = True
    w.drain_until_s = time.monotonic() + 20  # its drain's time far from up
    w.gens = {7: object()}  # a request whose end this side has not read
    return w


@pytest.mark.parametrize("how, planned", [("exit 0", True), ("exit 3", False), ("SIGKILL", False),
                                          ("still running", False)])
def test_a_draining_worker_that_exited_0_left_by_plan_whatever_is_unread(how, planned):
    lost = []
    hub = WorkerHub("tcp://127.0.0.1:0", on_hello=None, on_event=None, on_lost=lambda w, why: lost.append(why))
    code = {"exit 0": "0", "exit 3": "3"}.get(how, "None")
    proc = subprocess.Popen([sys.executable, "-c", f"import sys, time; time.sleep(30 if {code} is None else 0); "
                                                   f"sys.exit({code})"])
    try:
        if how == "SIGKILL":
            proc.send_signal(signal.SIGKILL)
        if how != "still running":
            proc.wait(30)
        w = _draining(proc)
        hub.lose(w, "send failed: its connection is gone (process exited, or network cut)")
        assert w.left_by_plan is planned and not w.alive and len(lost) == 1
    finally:
        proc.kill()
        proc.wait()
        hub.close()
