"""spawn_local_worker (worker/spawn.py): its worker is killed when the returned Popen is garbage-collected, as its
docstring says, and its readiness pipe is read at any descriptor number. Found in review: ``Popen.__del__`` kept a
running child in ``subprocess._active``, so the weakref finalizer that was to kill it never ran and the worker
served on; and the pipe was watched with ``select.select``, which refuses descriptors past 1,023."""

from __future__ import annotations

import fcntl
import gc
import os
import subprocess
import sys
import warnings

import msgspec

from proc_state import process_state, wait_for

from warmserve import protocol as P
from warmserve.worker import spawn
from warmserve.worker.spawn import spawn_local_worker


def test_a_worker_whose_popen_is_collected_is_killed_and_reaped(tmp_path):
    proc, endpoint = spawn_local_worker("cpu", memory_gib=0.0625, threads=1, log_path=str(tmp_path / "w.log"))
    pid = proc.pid
    assert endpoint.startswith("tcp://") and process_state(pid) not in ("Z", "reaped")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del proc
            gc.collect()
        # Before: still serving ("S") after its Popen was collected, for as long as this process lived.
        assert wait_for(lambda: process_state(pid) == "reaped", 5), process_state(pid)
        assert not any(p.pid == pid for p in subprocess._active or ())
    finally:
        if process_state(pid) not in ("Z", "reaped"):
            os.kill(pid, 9)


def test_only_a_collected_worker_popen_that_still_runs_is_killed():
    keep = spawn._WorkerPopen([sys.executable, "-c", "import time; time.sleep(30)"])
    ended = spawn._WorkerPopen([sys.executable, "-c", "pass"])
    dropped = spawn._WorkerPopen([sys.executable, "-c", "import time; time.sleep(30)"])
    pids = keep.pid, ended.pid, dropped.pid
    try:
        assert ended.wait(30) == 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del ended, dropped
            gc.collect()
        assert process_state(pids[2]) == "reaped"  # killed and reaped before its Popen went
        assert keep.poll() is None  # one still referenced runs on
        keep.terminate()
        assert keep.wait(30) == -15
    finally:
        keep.kill()
        keep.wait(30)
        for pid in pids[1:]:
            if process_state(pid) not in ("Z", "reaped"):
                os.kill(pid, 9)


def test_the_readiness_pipe_is_read_at_a_descriptor_past_1023(tmp_path, fds_past_1023):
    r, w = os.pipe()
    high = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 1100)  # as with over 1,024 client connections open
    os.close(r)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert high >= 1024
        hello = P.Hello(worker_id="w0", device="cpu", pid=proc.pid, endpoint="tcp://127.0.0.1:5555")
        os.write(w, msgspec.json.encode(hello) + b"\n")
        # Before: ValueError "filedescriptor out of range in select()".
        got = spawn._read_ready(high, proc, 5.0, str(tmp_path / "none.log"))
        assert got.endpoint == "tcp://127.0.0.1:5555"
    finally:
        os.close(high)
        os.close(w)
        proc.wait()
