"""A generation whose connection lost Tokens messages ends with WorkerLostError, not with text missing tokens.

The loss, as ZeroMQ makes it: a client's connection breaks on its side only (the worker's end stays open, as
after a reset that reached one side, or a half-open TCP connection), the client reconnects at once and takes its
routing id over (ROUTER_HANDOVER). The worker never fails a send, so it never gives the client up; what it had
sent on the old connection is gone. Found in review: the stream went on after the gap and ended "length" with
fewer tokens than generated.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from serving import write_slow_tiny_llama
from warmserve import errors
from warmserve import protocol as P
from warmserve.worker import AsyncWorkerClient, WorkerClient, spawn_local_worker

MODEL = "tiny-llama"
MAX_TOKENS = 1500
LONG = P.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
SHORT = P.SamplingParams(max_tokens=4, ignore_eos=True)


class OneSidedCutProxy:
    """A loopback TCP proxy that can hold back what the worker sends on the live connection, then close that
    connection on the client's side only: the client reconnects, the worker's end stays open and what it sent
    meanwhile is dropped here."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self.accepted = 0
        #: Per connection: [client side, worker side, bytes held from the worker (None: forwarding)].
        self._conns: list[list] = []
        self._lock = threading.Condition()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
                up = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # closed: the test is over
                return
            conn = [down, up, None]
            with self._lock:
                self._conns.append(conn)
                self.accepted += 1
                self._lock.notify_all()
            threading.Thread(target=self._to_worker, args=(conn,), daemon=True).start()
            threading.Thread(target=self._to_client, args=(conn,), daemon=True).start()

    @staticmethod
    def _to_worker(conn) -> None:
        down, up, _ = conn
        try:
            while data := down.recv(65536):
                up.sendall(data)
        except OSError:
            pass  # the client's side was closed by cut_client_side: the worker's side stays open

    def _to_client(self, conn) -> None:
        down, up, _ = conn
        try:
            while data := up.recv(65536):
                with self._lock:
                    if conn[2] is not None:
                        conn[2] += data
                        self._lock.notify_all()
                        continue
                down.sendall(data)
        except OSError:
            pass

    def hold(self) -> None:
        """Forward nothing more from the worker on the live connection."""
        with self._lock:
            self._conns[-1][2] = b""

    def wait_held(self, marker: bytes, within_s: float) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: marker in self._conns[-1][2], within_s), f"no {marker!r} held"

    def cut_client_side(self) -> None:
        """Close the live connection towards the client (it reconnects); the worker's end stays open, unread by
        anyone, so nothing it sends there arrives."""
        with self._lock:
            down = self._conns[-1][0]
        down.shutdown(socket.SHUT_RDWR)
        down.close()

    def wait_accepted(self, n: int, within_s: float) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: self.accepted >= n, within_s), "the client never reconnected"

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for down, up, _ in conns:
            for s in (down, up):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def __enter__(self) -> "OneSidedCutProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    model = write_slow_tiny_llama(str(tmp_path_factory.mktemp("models")), MODEL)
    proc, endpoint = spawn_local_worker("cpu", memory_gib=0.2, threads=1,
                                        log_path=str(tmp_path_factory.mktemp("worker") / "worker.log"))
    with WorkerClient(endpoint) as c:
        c.prewarm(model)
        c.activate(MODEL)
    yield proc, endpoint
    if proc.poll() is None:
        with WorkerClient(endpoint) as c:
            c.shutdown(timeout_s=10)
        proc.wait(timeout=10)


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _lose_tokens_in_flight(proxy: OneSidedCutProxy) -> None:
    proxy.hold()
    proxy.wait_held(b"Tokens", 10)
    proxy.cut_client_side()
    proxy.wait_accepted(2, 10)


def test_a_stream_that_lost_tokens_with_its_connection_fails_with_worker_lost(worker):
    with OneSidedCutProxy(_port(worker[1])) as proxy, WorkerClient(proxy.endpoint) as c:
        it = iter(c.generate(MODEL, [1, 2, 3], LONG, timeout_s=10))
        got = list(next(it).token_ids)
        _lose_tokens_in_flight(proxy)
        last, lost = None, None
        try:
            for ev in it:
                got += ev.token_ids
                last = ev
        except errors.WorkerLostError as e:
            lost = e
        assert lost is not None, (f"the stream ended ({last.finish_reason if last else None}) with {len(got)} of "
                                  f"{MAX_TOKENS} tokens: the gap went unnoticed")
        assert "lost" in lost.message and lost.got_seq > lost.expected_seq >= 1
        # The generation, still running on the worker, was aborted; the client goes on over its new connection.
        assert c.stats().in_flight == 0
        _, end = c.generate(MODEL, [4, 5], SHORT).collect()
        assert end.finish_reason == "length"


def test_an_async_stream_that_lost_tokens_with_its_connection_fails_with_worker_lost(worker):
    asyncio.run(asyncio.wait_for(_async_gap(worker[1]), 60))


async def _async_gap(endpoint: str) -> None:
    with OneSidedCutProxy(_port(endpoint)) as proxy:
        c = AsyncWorkerClient(proxy.endpoint)
        try:
            s = await c.generate(MODEL, [1, 2, 3], LONG, timeout_s=10)
            it = s.__aiter__()
            got = list((await it.__anext__()).token_ids)
            await asyncio.to_thread(_lose_tokens_in_flight, proxy)
            last, lost = None, None
            try:
                async for ev in it:
                    got += ev.token_ids
                    last = ev
            except errors.WorkerLostError as e:
                lost = e
            assert lost is not None, (f"the stream ended ({last.finish_reason if last else None}) with {len(got)} "
                                      f"of {MAX_TOKENS} tokens: the gap went unnoticed")
            assert lost.got_seq > lost.expected_seq >= 1
            # Aborted by the next call, before it is sent: the worker runs nothing of this client's any more.
            t0 = time.monotonic()
            assert (await c.stats()).in_flight == 0
            assert time.monotonic() - t0 < 5
            _, end = await (await c.generate(MODEL, [4, 5], SHORT)).collect()
            assert end.finish_reason == "length"
        finally:
            await c.close()
