"""Reading a request body, from the HTTP fuzzing review: a body that cannot be decompressed is an OpenAI-shaped 400
(it was a 500 and two logged tracebacks), a body that stops coming is a 408 after ``body.BODY_IDLE_TIMEOUT_S`` and
its connection is closed (it was held for ever), a Content-Encoding the server does not decode is a 415 before the
body is read (it was aiohttp's text 400 "Please install Brotli"), aiohttp's refusal of malformed HTTP is one INFO
line (it was an ERROR traceback each time), and a missing required field is named in ``param`` (it was null).
Served by aiohttp on a real loopback socket with the demo model's tokenizer; raw sockets where the case needs
malformed HTTP or a body that stalls."""

import asyncio
import gzip
import json
import logging
import time
import zlib

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from warmserve.controller import api, body as body_read, serve
from warmserve.controller.api import Api
from warmserve.errors import InvalidArgumentError

from test_http_api_log_and_limits import MODEL, Ctl

#: The body-read idle limit the tests run with (body.BODY_IDLE_TIMEOUT_S).
DEADLINE_S = 0.5
#: How long a test waits for an answer, or for the server to close: far more than DEADLINE_S; before the fixes
#: no answer came at all.
WAIT_S = 8.0
GOOD = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2}).encode()


def _serve(ctl, go):
    async def main():
        async with TestClient(TestServer(Api(ctl).app()), timeout=aiohttp.ClientTimeout(total=60)) as c:
            return await go(c)

    return asyncio.run(main())


async def _exchange(c: TestClient, parts: list[bytes], pause_s: float = 0.2,
                    until_closed: bool = True) -> tuple[bytes, bool]:
    """Sends ``parts`` on a raw connection to the test server, ``pause_s`` apart; returns what came back within
    WAIT_S (or, not ``until_closed``, once one whole answer came) and whether the server closed the connection."""
    reader, writer = await asyncio.open_connection(c.server.host, c.server.port)
    try:
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(pause_s)
            writer.write(part)
            await writer.drain()
    except ConnectionError:  # the server answered and closed before the rest was sent: read its answer
        pass
    out, closed = b"", False
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), max(end - loop.time(), 0.001))
            if not data:
                closed = True
                break
            out += data
            if not until_closed and _whole(out):
                break
    except (asyncio.TimeoutError, ConnectionError):
        pass
    writer.close()
    return out, closed


def _whole(raw: bytes) -> bool:
    if b"\r\n\r\n" not in raw:
        return False
    status, headers, body = _answer(raw)
    return len(body) >= int(headers.get("content-length", 1 << 30))


def _answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _head(extra: str, path: str = "/v1/completions") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


def test_a_body_that_cannot_be_decompressed_is_a_400_naming_the_encoding(model, caplog):
    """Found in review: Content-Encoding gzip or deflate with a body that is not was a 500 "internal error:
    RequestPayloadError" and two ERROR tracebacks."""
    async def go(c):
        out = []
        for coding in ("gzip", "deflate"):
            r = await c.post("/v1/completions", data=b"notcompressed!!!",
                             headers={"Content-Type": "application/json", "Content-Encoding": coding})
            out.append((coding, r.status, await r.json()))
        r = await c.post("/v1/chat/completions", data=gzip.compress(b'{"model":"x"}')[:-6],  # cut short
                         headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        out.append(("gzip", r.status, await r.json()))
        return out

    with caplog.at_level(logging.INFO):
        got = _serve(Ctl(model), go)
    for coding, status, body in got:
        assert status == 400 and body["error"]["type"] == "invalid_request_error", body
        assert body["error"]["message"].startswith(
            f"the request body could not be decoded: Content-Encoding {coding}"), body
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_compressed_bodies_are_decoded_and_a_decompressed_body_over_the_limit_is_a_413(model):
    """The server decodes gzip, x-gzip and deflate (zlib's format and raw) itself now, aiohttp's decoding being off;
    a body larger than api.MAX_BODY_BYTES once decompressed is a 413 naming the limit."""
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    codings = {"gzip": gzip.compress(GOOD), "x-gzip": gzip.compress(GOOD), "deflate": zlib.compress(GOOD),
               "Deflate": raw.compress(GOOD) + raw.flush(), "identity": GOOD}
    bomb = gzip.compress(b" " * (api.MAX_BODY_BYTES + 1))  # 16 KiB that decompress to one byte over the limit

    async def go(c):
        out = []
        for coding, body in codings.items():
            r = await c.post("/v1/completions", data=body, headers={"Content-Encoding": coding})
            out.append((r.status, (await r.json())["object"] if r.status == 200 else await r.text()))
        r = await c.post("/v1/completions", data=bomb, headers={"Content-Encoding": "gzip"})
        out.append((r.status, (await r.json())["error"]["message"]))
        return out

    got = _serve(Ctl(model), go)
    assert got[:-1] == [(200, "text_completion")] * len(codings), got
    assert got[-1][0] == 413 and f"{api.MAX_BODY_BYTES} bytes" in got[-1][1], got[-1]


def test_a_body_that_stops_coming_is_a_408_and_its_connection_is_closed(model, monkeypatch):
    """Found in review: a body read had no deadline; 500 connections that sent headers and part of a body were all
    still open after 75 s, and a chunked body whose malformed chunk came late got no answer at all."""
    monkeypatch.setattr(body_read, "BODY_IDLE_TIMEOUT_S", DEADLINE_S)
    stalled = [_head("Content-Length: 1000\r\n") + b'{"model":']
    late_bad_chunk = [_head("Transfer-Encoding: chunked\r\n") + b'3\r\n{"m\r\n', b"ZZ\r\nabc\r\n0\r\n\r\n"]

    async def go(c):
        return [await _exchange(c, parts) for parts in (stalled, late_bad_chunk)]

    for raw, closed in _serve(Ctl(model), go):
        assert raw, "no answer within the wait"
        status, headers, body = _answer(raw)
        assert status == 408 and headers["content-type"].startswith("application/json"), raw
        err = json.loads(body)["error"]
        assert err["code"] == "request_timeout" and f"none came for {DEADLINE_S:g} s" in err["message"], err
        assert closed, "the connection was not closed after the 408"


def test_an_unsupported_content_encoding_is_a_415_before_the_body_is_read(model):
    """Found in review: Content-Encoding br was aiohttp's text/plain 400 "Please install `Brotli`" (a server detail)
    and an ERROR traceback. Only 5 of the 1000 bytes announced are sent: the answer must not wait for the rest."""
    async def go(c):
        out = []
        for coding in codings:
            out.append(await _exchange(c, [_head(f"Content-Encoding: {coding}\r\nContent-Length: 1000\r\n")
                                           + b"xxxxx"], until_closed=False))
        return out

    codings = {"br": "br", "zstd": "zstd", "gzip, br": "br"}  # as sent: the one refused
    for (raw, _), refused in zip(_serve(Ctl(model), go), codings.values()):
        assert raw, "no answer within the wait"
        status, headers, body = _answer(raw)
        assert status == 415 and headers["content-type"].startswith("application/json"), raw
        err = json.loads(body)["error"]
        assert (err["type"] == "invalid_request_error"
                and f"Content-Encoding '{refused}' is not supported" in err["message"])


def test_a_body_announced_over_the_limit_is_a_413_before_it_is_read_and_its_connection_is_closed(model):
    """Found in review: a Content-Length over api.MAX_BODY_BYTES was refused only once all of the body had come (a
    client learnt of the limit after sending 16 MiB). Only 5 bytes of the body are sent: the answer must not wait
    for the rest, and the connection is closed (aiohttp would read on for the unwanted rest)."""
    async def go(c):
        return await _exchange(c, [_head(f"Content-Length: {api.MAX_BODY_BYTES + 1}\r\n") + b'{"mod'])

    raw, closed = _serve(Ctl(model), go)
    assert raw, "no answer within the wait"
    status, headers, body = _answer(raw)
    assert status == 413 and headers["content-type"].startswith("application/json"), raw
    assert f"{api.MAX_BODY_BYTES} bytes" in json.loads(body)["error"]["message"], body
    assert closed, "the connection was not closed after the 413"


def test_malformed_http_is_one_info_line_and_genuine_errors_stay_errors(model, caplog):
    """Found in review: each request aiohttp's parser refused (an overlong request line, a control character in a
    header) logged an aiohttp.server ERROR with a traceback: a port scanner filled the log. With the filter
    ``warmserve serve`` installs, each is one INFO line; the answer is still aiohttp's text/plain 400."""
    logger = logging.getLogger("aiohttp.server")
    logger.addFilter(serve.BAD_HTTP_AT_INFO)
    bad = [b"GET /v1/models/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
           _head(f"Content-Length: {len(GOOD)}\r\nX-Bad: \x01\r\n") + GOOD]

    async def go(c):
        return [await _exchange(c, [data], until_closed=False) for data in bad]

    try:
        with caplog.at_level(logging.INFO):
            got = _serve(Ctl(model), go)
            try:
                raise RuntimeError("a bug")
            except RuntimeError:
                logger.exception("Error handling request from %s", "127.0.0.1")
    finally:
        logger.removeFilter(serve.BAD_HTTP_AT_INFO)
    for raw, _ in got:
        status, headers, _body = _answer(raw)
        assert status == 400 and headers["content-type"].startswith("text/plain"), raw
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    refused = [r for r in records if "malformed HTTP request" in r.getMessage()]
    assert len(refused) == 2 and all(r.levelno == logging.INFO and not r.exc_info for r in refused), records
    genuine = [r for r in records if r not in refused]
    assert len(genuine) == 1 and genuine[0].levelno == logging.ERROR and genuine[0].exc_info, genuine


def test_a_missing_required_field_is_named_in_param(model):
    """Found in review: a body without model, prompt or messages was a 400 whose param was null, though its message
    named the field; a nested one now reads as the other params do (messages[0].role)."""
    cases = [("/v1/completions", {"prompt": "hi"}, "model"), ("/v1/completions", {"model": MODEL}, "prompt"),
             ("/v1/chat/completions", {"model": MODEL}, "messages"),
             ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": "x"}]}, "messages[0].role"),
             ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": "two"}, "max_tokens")]

    async def go(c):
        out = []
        for path, body, _ in cases:
            r = await c.post(path, json=body)
            out.append((r.status, (await r.json())["error"]))
        return out

    for (status, err), (_, _, param) in zip(_serve(Ctl(model), go), cases):
        assert status == 400 and err["param"] == param, (param, err)


def test_a_slow_steady_body_is_read_and_only_one_past_the_total_limit_is_a_408(model, monkeypatch):
    """From the review of the fix: its 30 s were a total deadline, so any 16 MiB body uploaded slower than 4.5 Mbit/s
    was a 408 while its bytes kept coming. Now the limit is on silence (BODY_IDLE_TIMEOUT_S), with a longer one on
    the whole (BODY_READ_TIMEOUT_S): six parts 0.3 s apart pass an idle limit of 0.5 s; with 1 s for the whole,
    the fourth part is the last in time (the client sends no more, so it reads the 408 before any reset)."""
    monkeypatch.setattr(body_read, "BODY_IDLE_TIMEOUT_S", DEADLINE_S)
    cut = [GOOD[i:i + 10] for i in range(0, len(GOOD), 10)][:5]
    parts = [_head(f"Content-Length: {len(GOOD)}\r\n") + cut[0], *cut[1:], GOOD[sum(map(len, cut)):]]

    async def go(c, sent):
        return await _exchange(c, sent, pause_s=0.3, until_closed=len(sent) < len(parts))

    raw, _ = _serve(Ctl(model), lambda c: go(c, parts))
    assert _answer(raw)[0] == 200, raw
    monkeypatch.setattr(body_read, "BODY_READ_TIMEOUT_S", 1.0)
    raw, closed = _serve(Ctl(model), lambda c: go(c, parts[:4]))
    status, _, answer = _answer(raw)
    assert status == 408 and "then not all of it came within 1 s" in json.loads(answer)["error"]["message"], raw
    assert closed, raw


def test_stacked_codings_are_a_415_and_a_gzip_body_of_several_members_is_read(model):
    """From the review of the fix: each coding listed was a full decompression of up to the body limit (300 stacked
    gzip layers took 2.8 s of CPU for one upload), a second Content-Encoding line was ignored (identity then br
    passed as identity), and a gzip body of two members (RFC 1952; aiohttp read it) was a 400."""
    twice = gzip.compress(gzip.compress(GOOD))
    head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    stacked = [(head + "Content-Encoding: gzip, gzip\r\n", twice, "2 codings"),
               (head + "Content-Encoding: gzip\r\nContent-Encoding: gzip\r\n", twice, "2 codings"),
               (head + "Content-Encoding: identity\r\nContent-Encoding: br\r\n", GOOD, "'br' is not supported")]
    half = len(GOOD) // 2
    members = gzip.compress(GOOD[:half]) + gzip.compress(GOOD[half:])

    async def go(c):
        out = [await _exchange(c, [f"{h}Content-Length: {len(b)}\r\n\r\n".encode() + b], until_closed=False)
               for h, b, _ in stacked]
        r = await c.post("/v1/completions", data=members, headers={"Content-Encoding": "gzip"})
        return out, (r.status, await r.text())

    got, whole = _serve(Ctl(model), go)
    for (raw, _), (_, _, why) in zip(got, stacked):
        status, _, answer = _answer(raw)
        assert status == 415 and why in json.loads(answer)["error"]["message"], raw
    assert whole[0] == 200, whole


def test_gzip_members_are_capped_and_nul_padding_between_them_is_skipped():
    """From the review of the fix: each gzip member cost a fresh decompressor and a copy of what was left, so 1,000
    members (52 KB in all) took 5.9 s of CPU; now at most MAX_GZIP_MEMBERS, and NUL padding after a member is
    skipped as the gzip module skips it (it was "no gzip data")."""
    member = gzip.compress(b"x" * 100)
    assert body_read.decoded(member + b"\0" * 8 + member, "gzip", 1 << 20) == b"x" * 200
    assert body_read.decoded(member * body_read.MAX_GZIP_MEMBERS, "gzip", 1 << 20) == b"x" * 1600
    t0 = time.process_time()
    with pytest.raises(InvalidArgumentError, match=f"more than {body_read.MAX_GZIP_MEMBERS} gzip members"):
        body_read.decoded(gzip.compress(b"x" * 16384) * 1000, "gzip", 16 << 20)
    assert time.process_time() - t0 < 1.0


def test_a_client_that_hangs_up_mid_body_is_a_499_and_no_aiohttp_error(model, caplog):
    """From the review of the fix: reading the body under asyncio.wait_for turned the cancellation of a handler
    whose client hung up (handler_cancellation, as `warmserve serve` runs) into ConnectionResetError, which aiohttp
    logged as an ERROR with a traceback for every such client."""
    async def main():
        runner = web.AppRunner(Api(Ctl(model)).app(), handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_head("Content-Length: 500\r\n") + b'{"model":')
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.close()
            await asyncio.sleep(0.5)
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert [r for r in caplog.records if r.name == "warmserve.access" and " status=499 " in r.getMessage()], \
        [r.getMessage() for r in caplog.records]
