"""The CURVE key files of a controller's local workers (``LocalCurveKeys``, controller/hub_sockets.py), from a
review: once swept from the temp dir they were never written again (every later restart of a local worker failed);
and a --curve-dir whose server.key_secret is a directory was reported "missing"."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest
import zmq.auth

from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.launch import start_cluster
from warmserve.controller.workers import WorkerHub
from warmserve.errors import InvalidArgumentError, TimeoutError_

from controller_harness import curve_dir, demo_path


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _on_disk(private_tmp) -> list[str]:
    """The secret key files in the private $TMPDIR (looked at without ``paths``, which writes them)."""
    return [str(p) for p in private_tmp.glob("*/*key_secret")]


def _hub(d) -> WorkerHub:
    return WorkerHub("tcp://127.0.0.1:0", on_hello=None, on_event=None, on_lost=None, curve_dir=str(d))


def test_swept_local_key_files_are_written_again_private_with_the_same_keys(tmp_path, private_tmp):
    hub = _hub(curve_dir(tmp_path))
    try:
        first = [zmq.auth.load_certificate(p) for p in hub.local_curve]
        shutil.rmtree(hub.curve_keys.dir)  # a temp cleaner's sweep
        again = hub.curve_keys.paths()
        assert [zmq.auth.load_certificate(p) for p in again] == first
        assert stat.S_IMODE(os.stat(os.path.dirname(again[1])).st_mode) == 0o700
        assert [stat.S_IMODE(os.stat(p).st_mode) for p in again] == [0o600, 0o600]
        os.unlink(again[1])  # one file gone is enough to write both anew
        assert [zmq.auth.load_certificate(p) for p in hub.curve_keys.paths()] == first
        hub.curve_keys.drop_files()
        assert os.listdir(private_tmp) == []
        assert hub.curve_keys.paths()[0] != hub.local_curve[0]
    finally:
        hub.close()
    assert os.listdir(private_tmp) == []  # the stop removes the dir written last
    with pytest.raises(InvalidArgumentError, match="socket is closed"):  # nothing left behind by a late restart
        hub.curve_keys.paths()
    assert os.listdir(private_tmp) == []


def test_the_files_go_once_each_local_worker_started_said_hello_or_exited(tmp_path, private_tmp):
    hub = _hub(curve_dir(tmp_path))
    local_public = zmq.auth.load_certificate(hub.local_curve[1])[0].decode("ascii")
    remote_public = zmq.curve_keypair()[0].decode("ascii")
    starting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a worker not joined yet
    died = subprocess.Popen([sys.executable, "-c", "pass"])  # one whose start failed before its Hello
    try:
        hub.curve_keys.started(starting.pid)
        hub.curve_keys.started(died.pid)
        died.wait()
        hub.curve_keys.heard(remote_public, starting.pid)  # a remote worker's pid says nothing of the local ones
        assert len(_on_disk(private_tmp)) == 1
        hub.curve_keys.heard(local_public, os.getpid())  # another local worker, rejoining: one is still starting
        assert len(_on_disk(private_tmp)) == 1
        hub.curve_keys.heard(local_public, starting.pid)
        assert os.listdir(private_tmp) == [] and hub.curve_keys.dir is None
        hub.curve_keys.paths()  # a restart writes them again, for as long as it has not joined
        hub.curve_keys.started(starting.pid)
        assert len(_on_disk(private_tmp)) == 1
        starting.kill()
        starting.wait()
        hub.curve_keys.heard(local_public, os.getpid())
        assert os.listdir(private_tmp) == []
    finally:
        starting.kill()
        starting.wait()
        hub.close()


def test_a_worker_that_died_unreaped_before_its_hello_holds_no_files(tmp_path, private_tmp):
    # Before: the key files asked whether a started worker lived with kill(pid, 0), which a zombie passes, so a
    # local worker dead before its Hello but not reaped yet kept the secret key on disk past the next Hello; one
    # answer now serves the restarts and the files (controller/pids.py).
    hub = _hub(curve_dir(tmp_path))
    local_public = zmq.auth.load_certificate(hub.local_curve[1])[0].decode("ascii")
    died = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        hub.curve_keys.started(died.pid)
        deadline = time.monotonic() + 30
        while _state(died.pid) != "Z":  # ended, not reaped: no wait() until the end
            assert time.monotonic() < deadline, f"pid {died.pid} did not end: state {_state(died.pid)}"
            time.sleep(0.01)
        assert len(_on_disk(private_tmp)) == 1
        hub.curve_keys.heard(local_public, os.getpid())  # another local worker's Hello
        assert os.listdir(private_tmp) == [] and hub.curve_keys.dir is None
    finally:
        died.wait()
        hub.close()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def test_a_server_key_secret_that_is_a_directory_is_said_to_be_no_file(tmp_path, private_tmp):
    d = tmp_path / "keys"
    (d / "server.key_secret").mkdir(parents=True)
    with pytest.raises(InvalidArgumentError, match="server.key_secret is not a file") as e:
        _hub(d)
    assert e.value.path == str(d / "server.key_secret")
    assert os.listdir(private_tmp) == []


def test_a_controller_with_no_local_worker_keeps_no_local_key_on_disk_while_it_waits(tmp_path, private_tmp):
    d = curve_dir(tmp_path)
    zmq.auth.create_certificates(str(d / "workers"), "remote")  # a remote worker's key: the wait is not refused
    cfg = ClusterConfig(models=(ModelSpec(path=demo_path(), name="llama-20m"),), cpu_workers=0, remote_workers=1,
                        worker_start_timeout_s=3.0, controller=ControllerConfig(curve_dir=str(d)))
    waiting = []  # $TMPDIR's entries in the middle of the 3 s wait (the start before it takes milliseconds)

    async def main():
        task = asyncio.ensure_future(start_cluster(cfg))
        t0 = asyncio.get_running_loop().time()
        while not task.done():
            if 1.0 <= asyncio.get_running_loop().time() - t0 <= 2.5:
                waiting.append(os.listdir(private_tmp))
            await asyncio.sleep(0.05)
        return await task

    with pytest.raises(TimeoutError_, match="0 of 1 workers registered"):
        asyncio.run(main())
    assert waiting and all(entries == [] for entries in waiting), waiting
    assert os.listdir(private_tmp) == []


def test_the_keys_taken_for_a_launcher_are_the_files_and_leave_none_on_disk(tmp_path, private_tmp):
    """What the Ray launcher hands its actors (``LocalCurveKeys.take``): the certificates the files held, read from
    memory, the files then off the disk (a restart does not wait on them; a SIGKILLed controller leaves none)."""
    hub = _hub(curve_dir(tmp_path))
    try:
        want = tuple(open(p, "rb").read() for p in hub.local_curve)
        assert hub.curve_keys.take() == want
        assert _on_disk(private_tmp) == [] and os.listdir(private_tmp) == []
    finally:
        hub.close()
