"""A Generate that cannot be sent, or that the worker cannot decode, on the sync clients. Found in review: on the
in-process twin a malformed one (a token id that is no int) raised ``ProtocolError`` from ``generate()`` itself,
where a socket worker answers it (its stream raises while iterating), and every such call, as every one whose send
failed (``ClosedError``, ``WorkerLostError``), left an inbox entry behind for good."""

from __future__ import annotations

import socket

import pytest

from warmserve import errors
from warmserve.worker import WorkerClient


def test_a_malformed_generate_on_the_twin_is_answered_as_a_socket_worker_answers_it(worker, tiny_models):
    worker.prewarm(tiny_models["tiny-llama"])
    worker.activate("tiny-llama")
    stream = worker.generate("tiny-llama", [1, "2"])  # raised ProtocolError here before
    with pytest.raises(errors.ProtocolError):
        stream.collect()
    for _ in range(20):
        with pytest.raises(errors.ProtocolError):
            worker.generate("tiny-llama", [1, "2"]).collect()
    assert worker._inbox == {}
    ids, last = worker.generate("tiny-llama", [1, 2]).collect()  # the worker serves on
    assert ids and last.finished


def test_a_generate_on_a_shut_down_twin_keeps_no_inbox_entry(worker):
    worker.shutdown()
    for _ in range(3):
        with pytest.raises(errors.ClosedError):
            worker.generate("tiny-llama", [1, 2])
    assert worker._inbox == {}


def test_a_generate_the_socket_refuses_keeps_no_inbox_entry():
    """Nobody serves the port and the queue holds one message: the second send finds it full."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with WorkerClient(f"tcp://127.0.0.1:{port}", hwm=1) as c:
        first = c.generate("tiny-llama", [1, 2])
        for _ in range(3):
            with pytest.raises(errors.WorkerLostError):
                c.generate("tiny-llama", [1, 2])
        assert list(c._inbox) == [first.id]
