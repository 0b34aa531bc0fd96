"""The controller's worker socket by default (``ControllerConfig.bind`` ""): an ipc:// socket in a folder of mode
0700, which only this user's processes on this machine can reach. Found in review (two users of one machine): the
loopback TCP default let another user's `warmserve worker --controller tcp://127.0.0.1:PORT` join a server as a
worker, which is sent requests' prompts. The folder goes with the hub, is left alone by a forked child's exit, and
one left by a controller killed with SIGKILL is swept at the next start."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

import pytest

from warmserve import owned_dirs
from warmserve.config import ControllerConfig
from warmserve.controller import hub_sockets
from warmserve.controller.workers import WorkerHub
from warmserve.endpoints import ipc_socket_path


def _hub() -> WorkerHub:
    return WorkerHub(ControllerConfig().bind, on_hello=lambda *a: None, on_event=lambda *a: None,
                     on_lost=lambda *a: None)


def test_the_default_socket_is_this_users_alone_and_goes_with_the_hub():
    hub = _hub()
    try:
        assert hub.endpoint.startswith("ipc://")
        path = ipc_socket_path(hub.endpoint)
        folder = os.path.dirname(path)
        st = os.lstat(folder)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        assert os.path.basename(folder).startswith(f"{hub_sockets.PRIVATE_DIR_PREFIX}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)  # this user's process: in
    finally:
        hub.close()
    assert not os.path.exists(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root (CI runs as root here)")
def test_another_users_process_cannot_connect():
    hub = _hub()
    try:
        path = ipc_socket_path(hub.endpoint)
        code = ("import os, socket, sys\nos.setgid(65534); os.setuid(65534)\n"
                "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(3)\nsys.exit(0)\n")
        rc = subprocess.run([sys.executable, "-c", code, path], timeout=60).returncode
        assert rc == 3, "a process of uid 65534 connected to the controller's worker socket"
    finally:
        hub.close()


@pytest.fixture
def short_tmp(monkeypatch):
    """A $TMPDIR short enough for a socket's path (pytest's tmp_path is not: private_bind would use /tmp)."""
    root = tempfile.mkdtemp(prefix="ws-", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


# Python 3.12+ warns at an os.fork() while threads run (left by other tests here), found running these on 3.13
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_childs_exit_leaves_the_folder_and_a_dead_owners_folder_is_swept(short_tmp):
    hub = _hub()
    try:
        folder = os.path.dirname(ipc_socket_path(hub.endpoint))
        pid = os.fork()
        if pid == 0:  # the hub's finalizer, as the child's exit runs it (weakref's atexit hook), then out
            try:
                hub._finalizer()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert os.path.isdir(folder), "a forked child's exit removed its parent's socket folder"
    finally:
        hub.close()
    # a folder named for a process that no longer runs, as a controller killed with SIGKILL leaves it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = os.path.join(short_tmp, f"{hub_sockets.PRIVATE_DIR_PREFIX}{owned_dirs.pid_ns()}-{dead.pid}-abc")
    os.mkdir(left, 0o700)
    endpoint, mine = hub_sockets.private_bind()
    assert not os.path.exists(left) and mine.startswith(short_tmp + "/") and endpoint == f"ipc://{mine}/w"


@pytest.mark.parametrize("prefix", [b"ws-caf\xe9-", ("ws-" + "\u00df" * 30).encode()],
                         ids=["latin1-bytes", "utf8-too-long-in-bytes"])
def test_a_tmpdir_not_utf8_or_too_long_in_bytes_puts_the_socket_under_tmp(monkeypatch, prefix):
    """Found in the locale review: a $TMPDIR whose path is not UTF-8 stopped every start with a bare
    UnicodeEncodeError (the endpoint is UTF-8 text), and the length check counted characters where a socket's path
    counts bytes (30 "ss-sharp"s pass as 30, are 60). Either way the socket goes under /tmp, and it serves."""
    root = tempfile.mkdtemp(prefix=prefix, dir=b"/tmp")
    try:
        monkeypatch.setattr(tempfile, "tempdir", os.fsdecode(root))
        hub = _hub()
        try:
            path = ipc_socket_path(hub.endpoint)
            assert os.path.dirname(os.path.dirname(path)) == "/tmp", path
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
        finally:
            hub.close()
    finally:
        os.rmdir(root)


def test_a_short_utf8_tmpdir_with_non_ascii_letters_is_used(monkeypatch):
    root = tempfile.mkdtemp(prefix="ws-caf\u00e9-", dir="/tmp")
    try:
        monkeypatch.setattr(tempfile, "tempdir", root)
        hub = _hub()
        try:
            path = ipc_socket_path(hub.endpoint)
            assert path.startswith(root + "/"), path
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
        finally:
            hub.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
