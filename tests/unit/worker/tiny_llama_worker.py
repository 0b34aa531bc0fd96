"""A bound worker serving tiny-llama with its engine loop on a thread (the tests of hostile input share it)."""

from __future__ import annotations

import contextlib

import torch

from warmserve.worker import WorkerClient
from warmserve.worker.core import WorkerCore
from warmserve.worker.main import build_pool
from warmserve.worker.server import WorkerServer

from test_security import _serve  # this folder's: the engine loop on a thread, failures kept for the test's thread


@contextlib.contextmanager
def tiny_llama_worker(tiny_models, worker_id: str):
    """Yields (server, thread, failures): an exception that ends the loop is kept in ``failures`` for the test's
    thread to check, as is the loop still running at the end. One torch thread meanwhile."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with build_pool("cpu", 0.25) as pool:
        core = WorkerCore(pool, device="cpu", worker_id=worker_id, emit=lambda peer, msg: None)
        server = WorkerServer(core, bind="tcp://127.0.0.1:0", heartbeat_interval_s=0.5)
        t, failures = _serve(server)
        try:
            with WorkerClient(server.endpoint) as good:
                good.prewarm(tiny_models["tiny-llama"])
                good.activate("tiny-llama")
            yield server, t, failures
        finally:
            if t.is_alive():
                core.stopping = True
                t.join(10)
            server.close()
            core.close()  # a loop that died left its instance open: closed before its pool is
            torch.set_num_threads(threads)
