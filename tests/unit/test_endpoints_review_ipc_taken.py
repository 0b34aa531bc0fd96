"""``endpoints.check_ipc_free``, found in review (two deployments of one machine): ZeroMQ's bind of an ipc:// path
another process listens on removes that file and binds anew, unsaid, so a second controller or worker given the
same --bind took the address from the first. Now a live listener there is refused, typed, naming the path and the
fix; a file nobody listens on (a SIGKILLed binder's) and any other address go on to the bind as before."""

from __future__ import annotations

import os
import socket
import shutil
import tempfile

import pytest
import zmq

from warmserve.endpoints import check_ipc_free
from warmserve.errors import InvalidArgumentError


@pytest.fixture
def folder():
    d = tempfile.mkdtemp(prefix="ws-ipc-")  # an ipc:// path must fit in 107 bytes: not under pytest's tmp_path
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_an_ipc_path_a_zeromq_socket_listens_on_is_refused(folder):
    path = os.path.join(folder, "hub.sock")
    ctx = zmq.Context()
    first = ctx.socket(zmq.ROUTER)
    first.setsockopt(zmq.LINGER, 0)
    first.bind("ipc://" + path)
    try:
        with pytest.raises(InvalidArgumentError) as e:
            check_ipc_free("ipc://" + path, "--bind")
        said = str(e.value)
        assert said.startswith("--bind ") and path in said and "already listens" in said, said
        assert "Fix:" in said and e.value.fields["path"] == path
        assert os.path.exists(path)  # the first one's file is left alone
    finally:
        first.close()
        ctx.term()


def test_a_stale_socket_file_other_files_and_other_addresses_go_on_to_the_bind(folder):
    stale = os.path.join(folder, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)  # bound and closed, never listening: as a binder killed with SIGKILL leaves it
    s.close()
    check_ipc_free("ipc://" + stale, "--bind")
    check_ipc_free("ipc://" + os.path.join(folder, "none.sock"), "--bind")
    open(plain := os.path.join(folder, "plain"), "w").close()
    check_ipc_free("ipc://" + plain, "--bind")
    for other in ("tcp://127.0.0.1:0", "inproc://x", "ipc://@abstract-name"):
        check_ipc_free(other, "--bind")
