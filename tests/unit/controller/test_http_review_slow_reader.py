"""A streaming client that stops reading, from the HTTP review: its connection is closed once a write has waited
``api.STREAM_WRITE_TIMEOUT_S`` (2 s here) for it, its generations still running are aborted as a client's that hung
up, and its max_concurrent_requests slots are freed, so other clients are served again. Found in review: aiohttp's
writes have no timeout, and one client (n=16, never reading) held all 16 slots, its generations long ended, until it
closed its socket. Served by aiohttp on a real socket (handler cancellation on, as ``warmserve serve`` runs it) with
the demo model's tokenizer; the controller behind it is a stand-in whose requests are real ``Req`` objects; the
silent client is a raw socket with a tiny receive buffer, the server's send buffers are as small (so that little
output fills them)."""

import asyncio
import socket
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from controller_harness import raw_completion, small_send_buffer

from warmserve.controller import api
from warmserve.controller.api import Api
from warmserve.controller.metrics import ControllerMetrics
from warmserve.controller.requests import Req

MODEL = "llama-20m"
#: The server's limit, and the silent client's n: it takes every slot.
SLOTS = 16
#: The write timeout the test runs with (api.STREAM_WRITE_TIMEOUT_S).
TIMEOUT_S = 2.0
#: The slots must be free this long after the silent client's output was produced (the write timeout and a margin
#: for a slow, shared machine); before the fix they stayed taken for as long as its socket was open.
FREED_WITHIN_S = TIMEOUT_S + 9.0
#: The silent client's output: per choice, this many pushes of PIECE_TOKENS tokens of a 17-character token,
#: about 0.3 MiB in all, far more than the sockets' buffers (both as small as the kernel allows) and the
#: transport's hold (64 KiB).
PUSHES = 8
PIECE_TOKENS = 150
LONG_TOKEN = 4431  # " mentmentmenttion": the demo vocabulary's longest


class Ctl:
    """Serves the demo model. A request with max_tokens over 2 (the silent client's) gets PUSHES pieces, one per
    turn of the loop, then ends ("length") when ``finish``, or runs on; any other gets two tokens and ends."""

    def __init__(self, model, finish: bool):
        self.m = model
        self.metrics = ControllerMetrics()
        self.finish = finish
        self.submitted: list[Req] = []
        self.fed = 0  # silent-client requests whose pieces are all pushed
        self.aborted: list[Req] = []
        self._feeders: list[asyncio.Task] = []

    def health(self):
        return {"ok": True, "workers": 1}

    def model_names(self):
        return [MODEL]

    def model(self, name):
        return self.m

    async def submit(self, model, ids, sampling, siblings=()):
        r = Req(len(self.submitted) + 1, model, ids, sampling, timeout_s=60.0)
        r._abort_cb = self.aborted.append
        self.submitted.append(r)
        if sampling.max_tokens > 2:
            self._feeders.append(asyncio.ensure_future(self._feed(r)))
        else:
            r.push([LONG_TOKEN, LONG_TOKEN])
            r.finish("length")
        return r

    async def _feed(self, r: Req) -> None:
        for _ in range(PUSHES):
            r.push([LONG_TOKEN] * PIECE_TOKENS)
            await asyncio.sleep(0)
        if self.finish:
            r.finish("length")
        self.fed += 1


def _silent_client(port: int) -> socket.socket:
    """A streaming request of SLOTS choices from a socket that never reads (its receive buffer as small as the
    kernel allows)."""
    return raw_completion(port, {"model": MODEL, "prompt": "z", "max_tokens": 1000, "n": SLOTS, "stream": True})


def _closed(s: socket.socket, timeout_s: float) -> bool:
    """Whether the server closed the connection: reading what it holds ends in EOF or a reset within timeout_s."""
    s.settimeout(timeout_s)
    try:
        while s.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return True


async def _until(cond, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.mark.parametrize("finish", [True, False], ids=["generations_ended", "still_generating"])
def test_a_stream_client_that_stops_reading_is_closed_and_frees_its_slots(model, monkeypatch, finish):
    monkeypatch.setattr(api, "STREAM_WRITE_TIMEOUT_S", TIMEOUT_S)
    ctl = Ctl(model, finish)
    probe = {"model": MODEL, "prompt": "ok", "max_tokens": 2}

    async def main():
        app = Api(ctl, max_concurrent_requests=SLOTS).app()
        app.on_response_prepare.append(small_send_buffer)
        server = TestServer(app, handler_cancellation=True)
        async with TestClient(server, timeout=aiohttp.ClientTimeout(total=60)) as c:
            silent = _silent_client(server.port)
            try:
                assert await _until(lambda: ctl.fed == SLOTS, 30), f"{ctl.fed} of {SLOTS} choices fed"
                fed_at = time.monotonic()
                # Its handler waits in a write: the slots are taken, and the 429 says by what.
                r = await c.post("/v1/completions", json=probe)
                err = (await r.json())["error"]
                assert r.status == 429 and f"{SLOTS} requests are in flight" in err["message"], err
                status = r.status
                while status != 200 and time.monotonic() - fed_at < FREED_WITHIN_S:
                    await asyncio.sleep(0.2)
                    r = await c.post("/v1/completions", json=probe)
                    status = r.status
                    await r.read()
                assert status == 200, (f"the silent client still holds the slots {FREED_WITHIN_S:g} s after its "
                                       f"output was produced (write timeout {TIMEOUT_S:g} s)")
                silent_reqs = ctl.submitted[:SLOTS]
                assert all(q.done for q in silent_reqs)
                # Still running: aborted as a client's that hung up; ended: no abort of anything
                assert ctl.aborted == ([] if finish else silent_reqs)
                assert finish or all(q.abort_reason == "abort" for q in silent_reqs)
                assert await asyncio.to_thread(_closed, silent, 10.0), "the silent client's connection is open"
            finally:
                silent.close()
                for t in ctl._feeders:
                    t.cancel()

    asyncio.run(main())
