"""warmserve_rejected_requests_total labels a 405 with the route template of its path, and counts aiohttp's own 400
for a request it could not parse (route "unparsed"). Found in review: a 405 was labelled "unmatched", as a 404 for
a path no route has, and a malformed request's 400 was not counted at all. The HTTP layer on a real socket."""

import asyncio

from aiohttp.test_utils import TestServer

from warmserve.controller.api import Api

from test_metrics import _Ctl


async def _raw(server: TestServer, data: bytes) -> str:
    """The status line the server answers ``data`` with."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(data)
    await writer.drain()
    line = (await reader.readline()).decode().strip()
    writer.close()
    await writer.wait_closed()
    return line


def _rejected(ctl) -> dict[tuple[str, str], float]:
    fam = ctl.metrics.rejected.metric
    return {(s.labels["route"], s.labels["status"]): s.value for m in fam.collect() for s in m.samples
            if s.name.endswith("_total") and s.value}


def test_a_405_has_its_route_and_a_malformed_request_is_counted():
    ctl = _Ctl()

    async def main():
        server = TestServer(Api(ctl).app())
        await server.start_server()
        try:
            assert (await _raw(server, b"GET /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n")).split()[1] == "405"
            assert (await _raw(server, b"POST /v1/models/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                    ).split()[1] == "405"
            assert (await _raw(server, b"GET /no/such/path HTTP/1.1\r\nHost: x\r\n\r\n")).split()[1] == "404"
            assert (await _raw(server, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
                    ).split()[1] == "400"
            assert (await _raw(server, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")).split()[1] == "200"
            await asyncio.sleep(0.05)  # the access-log hook runs once the answer is written
        finally:
            await server.close()

    asyncio.run(main())
    assert _rejected(ctl) == {("/v1/completions", "405"): 1, ("/v1/models/{name}", "405"): 1,
                              ("unmatched", "404"): 1, ("unparsed", "400"): 1}
