"""A connected worker's drain (``WorkerServer.drain``, what its SIGTERM handler calls): it says so in its Stats at
once, lets its generation in flight run to its end, then leaves its loop; past the drain's time it aborts what is
left. A real engine on a tiny checkpoint behind a scripted controller (a ROUTER socket)."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from warmserve import protocol as P
from warmserve.memory import PagePool
from warmserve.worker.core import WorkerCore
from warmserve.worker.server import WorkerServer

MODEL = "tiny-llama"


class _Controller:
    """The controller's end: a ROUTER socket, and the worker's loop on a thread (what it raised reaches the test)."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.pool = PagePool(64 << 20, prefault=False)
        self.core = WorkerCore(self.pool, device="cpu", worker_id="w1", emit=lambda peer, msg: None)
        self.srv = WorkerServer(self.core, controller=f"tcp://127.0.0.1:{port}", heartbeat_interval_s=0.2)
        self.raised: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self.srv.serve_forever()
        except BaseException as e:  # reaches the test's thread in close()
            self.raised.append(e)

    def send(self, msg) -> None:
        self.sock.send_multipart([b"w1", P.encode(msg)])

    def recv(self, timeout_s: float):
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return P.decode_reply(self.sock.recv_multipart()[1])

    def until(self, cond, timeout_s: float, seen: list) -> object:
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None:
                seen.append(msg)
                if cond(msg):
                    return msg
        raise AssertionError(f"not within {timeout_s} s; got {[type(m).__name__ for m in seen[-5:]]}")

    def serving(self, path: str, max_tokens: int) -> list:
        """The model activated and one generation of ``max_tokens`` started (its first tokens out)."""
        seen: list = []
        self.until(lambda m: isinstance(m, P.Hello), 10, seen)
        self.send(P.Prewarm(id=1, path=path, name=MODEL))
        self.until(lambda m: isinstance(m, (P.Prewarmed, P.Error)) and m.id == 1, 60, seen)
        self.send(P.Activate(id=2, name=MODEL, kv_blocks=8))
        assert isinstance(self.until(lambda m: getattr(m, "id", 0) == 2, 30, seen), P.Activated), seen[-1]
        self.send(P.Generate(id=3, model=MODEL, prompt_ids=[5, 6, 7],
                             sampling=P.SamplingParams(max_tokens=max_tokens, ignore_eos=True)))
        first = self.until(lambda m: isinstance(m, (P.Tokens, P.Error)) and m.id == 3, 30, seen)
        assert isinstance(first, P.Tokens), first
        return seen

    def close(self) -> None:
        self.core.stopping = True
        self.thread.join(15)
        self.sock.close(0)
        self.ctx.term()
        self.pool.close()
        assert not self.thread.is_alive() and not self.raised, self.raised


@pytest.fixture
def controller():
    c = _Controller()
    try:
        yield c
    finally:
        c.close()


def test_a_drain_is_said_at_once_finishes_the_generation_and_ends_the_loop(controller, tiny_models):
    seen = controller.serving(tiny_models[MODEL], max_tokens=200)
    assert controller.srv.drain(30.0)
    assert not controller.srv.drain(30.0)  # a second SIGTERM: the caller stops at once
    controller.until(lambda m: isinstance(m, P.Stats) and m.draining, 2, seen)
    last = controller.until(lambda m: isinstance(m, P.Tokens) and m.finished, 60, seen)
    assert last.finish_reason == "length"
    assert sum(len(m.token_ids) for m in seen if isinstance(m, P.Tokens) and m.id == 3) == 200
    controller.thread.join(5)
    assert not controller.thread.is_alive(), "the loop went on after its last generation ended"


def test_a_drain_past_its_time_aborts_what_is_left(controller, tiny_models):
    seen = controller.serving(tiny_models[MODEL], max_tokens=1900)  # seconds of steps
    assert controller.srv.drain(0.2)
    controller.until(lambda m: isinstance(m, P.Stats) and m.draining, 2, seen)
    last = controller.until(lambda m: isinstance(m, P.Tokens) and m.finished, 10, seen)
    assert last.finish_reason == "abort"  # the controller starts it over elsewhere
    controller.thread.join(5)
    assert not controller.thread.is_alive()


def test_a_draining_worker_the_controller_lost_stops_and_says_no_hello(controller, tiny_models):
    """Told ``Rejoin``, a worker says Hello to be admitted again; a draining one would be sent work as it leaves."""
    seen = controller.serving(tiny_models[MODEL], max_tokens=1900)
    assert controller.srv.drain(60.0)
    controller.until(lambda m: isinstance(m, P.Stats) and m.draining, 2, seen)
    controller.sock.send_multipart([b"w1", P.encode(P.Rejoin())])
    controller.thread.join(10)  # what it ran is dropped unanswered (the controller started it over): drained
    assert not controller.thread.is_alive()
    while (msg := controller.recv(0.5)) is not None:
        seen.append(msg)
    assert not [m for m in seen[1:] if isinstance(m, P.Hello)], [type(m).__name__ for m in seen]


def test_no_drain_for_a_timeout_of_zero_or_a_bound_worker():
    pool = PagePool(16 << 20, prefault=False)
    try:
        connected = WorkerServer(WorkerCore(pool, device="cpu", worker_id="w1", emit=lambda peer, msg: None),
                                 controller="tcp://127.0.0.1:9")
        bound = WorkerServer(WorkerCore(pool, device="cpu", worker_id="w2", emit=lambda peer, msg: None),
                             bind="tcp://127.0.0.1:0")
        try:
            assert not connected.drain(0.0) and not connected.core.draining
            assert not bound.drain(10.0) and not bound.core.draining  # no controller routes its clients away
            assert connected.drain(10.0) and connected.core.draining
        finally:
            connected.close()
            bound.close()
    finally:
        pool.close()
