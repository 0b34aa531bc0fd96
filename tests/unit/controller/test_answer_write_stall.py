"""A client that never reads a large answer of one body (not streamed: /v1/completions with logprobs, about 270 KiB
of JSON) has its connection closed once the write has waited ``api.STREAM_WRITE_TIMEOUT_S`` (1 s here) with no byte
taken, as a stream's is: a WARNING says so, the access log says 499, and the next request is served. Found in review:
aiohttp writes a returned ``web.Response`` with no timeout, and such a client kept its connection, with the unsent
body (about 260 KiB here) in the server's transport, for as long as it kept its socket open. A client that reads the
same answer, at once or slowly (taking bytes, the whole over longer than twice the timeout), gets all of it as valid
JSON. Served by aiohttp on a loopback socket (handler cancellation on, as ``warmserve serve`` runs it) with the demo
model's tokenizer; the controller behind it is a stand-in whose requests are real ``Req`` objects; the raw clients'
receive buffers and the server's send buffers are as small as the kernel allows."""

import asyncio
import json
import logging
import socket
import time

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from controller_harness import HttpController, raw_completion, small_send_buffer
from log_lines import LogLines

from warmserve.controller import api
from warmserve.controller.api import Api
from warmserve.protocol import TokenLogprobs

MODEL = "llama-20m"
#: The write timeout the test runs with (api.STREAM_WRITE_TIMEOUT_S).
TIMEOUT_S = 1.0
#: The silent client's connection must be closed this long after its request was sent: twice the timeout (the
#: watch looks once per timeout) and a margin for a slow, shared machine. Before the fix it stayed open.
CLOSED_WITHIN_S = 2 * TIMEOUT_S + 8.0
#: The large answer: this many tokens of the demo vocabulary's longest (17 characters), each with LOGPROBS
#: alternatives; its JSON is far larger than the sockets' buffers plus the transport's hold (64 KiB).
TOKENS = 2000
LOGPROBS = 5
LONG_TOKEN = 4431
LARGE = {"model": MODEL, "prompt": "z", "max_tokens": TOKENS, "logprobs": LOGPROBS}
SMALL = {"model": MODEL, "prompt": "ok", "max_tokens": 2}
#: The slow reader takes this many bytes per pause: the whole answer takes it longer than twice the timeout.
SLOW_BYTES = 16 << 10
SLOW_PAUSE_S = 0.2


class Ctl(HttpController):
    """Serves the demo model: each request's tokens, with their logprobs when asked for, come at once, then its end."""

    async def submit(self, model, ids, sampling, siblings=()):
        r = await super().submit(model, ids, sampling, siblings)
        k = sampling.logprobs
        lps = None if k is None else [TokenLogprobs(logprob=-1.0, top_ids=[LONG_TOKEN - j for j in range(k)],
                                                    top_logprobs=[-1.0] * k)] * sampling.max_tokens
        r.push([LONG_TOKEN] * sampling.max_tokens, logprobs=lps)
        r.finish("length")
        return r


def _read_to_eof(s: socket.socket, timeout_s: float) -> tuple[int, bool]:
    """Bytes read, and whether the connection ended (EOF or reset) within timeout_s; a whole answer on a kept-alive
    connection reads to a timeout."""
    got, end = 0, time.monotonic() + timeout_s
    try:
        while True:
            s.settimeout(max(end - time.monotonic(), 0.01))
            data = s.recv(1 << 20)
            if not data:
                return got, True
            got += len(data)
    except ConnectionResetError:
        return got, True
    except socket.timeout:
        return got, False


def _read_slowly(s: socket.socket) -> tuple[int, bytes, float]:
    """The answer's status and body, read SLOW_BYTES at a time (one receive buffer at a time) with SLOW_PAUSE_S
    between, and the seconds it took."""
    start, buf = time.monotonic(), b""
    s.settimeout(30.0)
    while b"\r\n\r\n" not in buf:
        buf += s.recv(SLOW_BYTES)
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length")
    while len(body) < length:
        time.sleep(SLOW_PAUSE_S)
        step = min(len(body) + SLOW_BYTES, length)
        while len(body) < step:
            data = s.recv(step - len(body))
            assert data, f"the connection ended after {len(body)} of the body's {length} bytes"
            body += data
    return int(lines[0].split()[1]), body, time.monotonic() - start


def _check_whole(body: dict) -> None:
    choice = body["choices"][0]
    assert len(choice["text"]) == 17 * TOKENS and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == TOKENS
    assert all(len(top) == LOGPROBS for top in choice["logprobs"]["top_logprobs"])


def test_a_client_that_never_reads_a_whole_answer_is_closed_and_readers_get_it_whole(model, monkeypatch):
    monkeypatch.setattr(api, "STREAM_WRITE_TIMEOUT_S", TIMEOUT_S)
    ctl = Ctl(model)
    lines = LogLines()
    loggers = [logging.getLogger(n) for n in ("warmserve.controller", "warmserve.access")]

    async def main():
        app = Api(ctl, max_concurrent_requests=1).app()
        app.on_response_prepare.append(small_send_buffer)
        server = TestServer(app, handler_cancellation=True)
        async with TestClient(server, timeout=aiohttp.ClientTimeout(total=60)) as c:
            # A reader gets the whole answer, and it is as large as the test needs.
            r = await c.post("/v1/completions", json=LARGE)
            raw = await r.read()
            assert r.status == 200 and len(raw) > 200 << 10, (r.status, len(raw))
            _check_whole(json.loads(raw))

            silent = raw_completion(server.port, LARGE)
            sent_at = time.monotonic()
            try:
                warned = [m for m in lines.lines if "stopped reading" in m]
                while not warned and time.monotonic() - sent_at < CLOSED_WITHIN_S:
                    await asyncio.sleep(0.1)
                    warned = [m for m in lines.lines if "stopped reading" in m]
                assert warned, (f"the silent client's connection is still open {CLOSED_WITHIN_S:g} s after its "
                                f"request (write timeout {TIMEOUT_S:g} s)")
                assert f"took no bytes of its answer for {TIMEOUT_S:g} s" in warned[0], warned
                got, ended = await asyncio.to_thread(_read_to_eof, silent, 10.0)
                assert ended and got < len(raw), f"read {got} bytes of {len(raw)}, connection ended: {ended}"
            finally:
                silent.close()
            assert any("status=499" in m and "completion_tokens=2000" in m for m in lines.lines), lines.lines

            # Its slot is free (max_concurrent_requests 1): the next request is served.
            r = await c.post("/v1/completions", json=SMALL)
            assert r.status == 200, await r.text()

            # A slow reader, whose answer takes longer than twice the write timeout to read, gets all of it.
            slow = raw_completion(server.port, LARGE)
            try:
                status, body, took_s = await asyncio.to_thread(_read_slowly, slow)
            finally:
                slow.close()
            assert status == 200 and took_s > 2 * TIMEOUT_S, (status, took_s)
            _check_whole(json.loads(body))

    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(lines)
        lg.setLevel(logging.INFO)
    try:
        asyncio.run(main())
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(lines)
            lg.setLevel(level)
