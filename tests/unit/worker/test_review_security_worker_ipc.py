"""A worker bound to an ``ipc://`` path, from a security review: its socket file was left behind when it closed
(the controller's hub removes its own). A worker connected to a controller's ipc:// address leaves that file alone:
it is the controller's."""

from __future__ import annotations

import os
import threading

from warmserve.controller.workers import WorkerHub
from warmserve.worker.client import WorkerClient
from warmserve.worker.core import WorkerCore
from warmserve.worker.main import build_pool
from warmserve.worker.server import WorkerServer


def test_a_worker_bound_to_an_ipc_path_removes_its_file_on_close(tmp_path):
    path = tmp_path / "w.sock"
    with build_pool("cpu", 0.01) as pool:
        core = WorkerCore(pool, device="cpu", worker_id="wipc", emit=lambda peer, msg: None)
        server = WorkerServer(core, bind=f"ipc://{path}")
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        c = WorkerClient(f"ipc://{path}", default_timeout_s=10)
        try:
            assert c.stats().worker_id == "wipc"
            assert path.exists()
            c.shutdown()
            t.join(15)
            assert not t.is_alive()
        finally:
            c.close()
            server.close()
    assert not path.exists()
    server.close()  # closed already: nothing to remove, no error


def test_a_bound_worker_whose_file_is_gone_already_closes_quietly(tmp_path):
    path = tmp_path / "gone.sock"
    with build_pool("cpu", 0.01) as pool:
        server = WorkerServer(WorkerCore(pool, device="cpu", worker_id="wg", emit=lambda p, m: None),
                              bind=f"ipc://{path}")
        os.unlink(path)  # someone cleaned the directory
        server.close()
    assert not path.exists()


def test_a_worker_connected_to_an_ipc_controller_leaves_the_controllers_file(tmp_path):
    path = tmp_path / "hub.sock"
    hub = WorkerHub(f"ipc://{path}", on_hello=None, on_event=None, on_lost=None)
    try:
        with build_pool("cpu", 0.01) as pool:
            server = WorkerServer(WorkerCore(pool, device="cpu", worker_id="wc", emit=lambda p, m: None),
                                  controller=f"ipc://{path}")
            server.close()
        assert path.exists()
    finally:
        hub.close()
    assert not path.exists()
