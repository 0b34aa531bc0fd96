"""``Expect: 100-continue`` (curl's for bodies over 1 MiB): the interim 100 only for a body the server will read; a
request refused unread (too large, an encoding not decoded, no API key) gets its final answer first, before the
client sends any of its body. Found in review: the 100 went first, and curl sent 512 KiB before the 413. Raw HTTP
on a real socket, the HTTP layer over a stand-in controller."""

import asyncio

from aiohttp.test_utils import TestServer

from warmserve.controller.api import Api

from test_http_api import Models


async def _first_line(port: int, headers: dict) -> str:
    """The status lines the server sends for a POST /v1/completions with these headers and no body yet (after a
    100, the body goes, and the final answer's line follows)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Expect: 100-continue\r\n{lines}\r\n".encode())
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    if line.startswith(b"HTTP/1.1 100"):  # the body goes now; the final answer follows
        await reader.readline()
        writer.write(b"{}")
        await writer.drain()
        final = await asyncio.wait_for(reader.readline(), 10)
        line += final
    writer.close()
    return line.decode().replace("\r\n", " | ").strip()


def test_the_100_goes_only_to_a_body_the_server_will_read():
    async def main():
        server = TestServer(Api(Models(), api_key="k").app())
        await server.start_server()
        try:
            key = {"Authorization": "Bearer k"}
            got = {}
            for name, headers in {"big": {**key, "Content-Length": "99999999"},
                                  "no key": {"Content-Length": "2"},
                                  "brotli": {**key, "Content-Length": "2", "Content-Encoding": "br"},
                                  "fine": {**key, "Content-Length": "2"}}.items():
                got[name] = await _first_line(server.port, headers)
            return got
        finally:
            await server.close()

    got = asyncio.run(main())
    assert got["big"].startswith("HTTP/1.1 413"), got
    assert got["no key"].startswith("HTTP/1.1 401"), got
    assert got["brotli"].startswith("HTTP/1.1 415"), got
    # the interim answer, then the body's own (a 400: {} names no model)
    assert got["fine"].startswith("HTTP/1.1 100 Continue | HTTP/1.1 400"), got

