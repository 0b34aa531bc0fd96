"""spawn_local_worker's own log (no ``log_path`` given): removed once its worker has ended cleanly (exit 0 after a
Shutdown, or killed through its Popen), kept where the worker failed by itself, since the errors name it. Found in
review: every call left one /tmp/warmserve-worker-*.log, however the worker ended. A caller's ``log_path`` stays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import pytest

from warmserve import errors
from warmserve.worker import WorkerClient, spawn_local_worker

MEMORY_GIB = 0.0625


@pytest.fixture
def tmp_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the default logs are made
    return tmp_path


def _logs(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("warmserve-worker-*.log"))


def test_a_default_log_goes_once_its_worker_ended_cleanly(tmp_dir):
    proc, endpoint = spawn_local_worker("cpu", memory_gib=MEMORY_GIB, threads=1)
    assert os.path.dirname(proc.log_path) == str(tmp_dir) and os.path.isfile(proc.log_path)
    with WorkerClient(endpoint) as client:
        client.shutdown(timeout_s=30)
    assert proc.wait(30) == 0
    # Before: still there, one more file in /tmp for each worker started.
    assert not os.path.exists(proc.log_path)

    killed, _ = spawn_local_worker("cpu", memory_gib=MEMORY_GIB, threads=1)
    killed.kill()
    assert killed.wait(30) == -signal.SIGKILL
    assert _logs(tmp_dir) == []

    mine = tmp_dir / "mine.log"
    own, _ = spawn_local_worker("cpu", memory_gib=MEMORY_GIB, threads=1, log_path=str(mine))
    own.terminate()
    assert own.wait(30) == 0  # SIGTERM: the worker's clean exit
    assert mine.is_file()


def test_a_worker_that_failed_keeps_the_log_its_error_names(tmp_dir):
    with pytest.raises(errors.WorkerLostError, match="--device must be cpu or cuda") as e:
        spawn_local_worker("tpu:0", memory_gib=MEMORY_GIB, threads=1)
    [name] = _logs(tmp_dir)
    assert str(tmp_dir / name) in str(e.value) and "--device" in (tmp_dir / name).read_text()

    proc, _ = spawn_local_worker("cpu", memory_gib=MEMORY_GIB, threads=1)
    os.kill(proc.pid, signal.SIGKILL)  # not ours: as the OOM killer would
    assert proc.wait(30) == -signal.SIGKILL
    assert os.path.isfile(proc.log_path) and len(_logs(tmp_dir)) == 2



def test_a_worker_still_running_at_interpreter_exit_is_killed_and_its_default_log_goes(tmp_path):
    code = ("from warmserve.worker import spawn_local_worker\n"
            f"proc, _ = spawn_local_worker('cpu', memory_gib={MEMORY_GIB}, threads=1)\n"
            "print(proc.log_path, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and os.path.dirname(out.stdout.strip()) == str(tmp_path), out.stderr
    assert not os.path.exists(out.stdout.strip())  # the exit's finalizer killed the worker: an end of ours
