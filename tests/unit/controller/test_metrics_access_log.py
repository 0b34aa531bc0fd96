"""One access-log line per HTTP request, errors with their request id, the Bearer scheme in any case, and the
invalid-UTF-8 error as a sentence: the HTTP layer served by aiohttp on a real socket."""

import asyncio
import logging

from aiohttp.test_utils import TestClient, TestServer

from warmserve.controller.api import Api

from test_metrics import _Ctl


def _run(go, api_key=""):
    async def main():
        async with TestClient(TestServer(Api(_Ctl(), api_key=api_key).app())) as c:
            return await go(c)

    return asyncio.run(main())


def test_the_bearer_scheme_is_accepted_in_any_case():
    async def go(c):
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            r = await c.get("/v1/models", headers={"Authorization": f"{scheme} k"})
            assert r.status == 200, scheme
        for bad in ("Basic k", "Bearer", "Bearerk", "Bearer kk"):
            r = await c.get("/v1/models", headers={"Authorization": bad})
            assert r.status == 401, bad

    _run(go, api_key="k")


def test_invalid_utf8_reads_as_a_sentence():
    async def go(c):
        r = await c.post("/v1/completions", data=b'{"model": "m", "prompt": "ab\xff"}',
                         headers={"Content-Type": "application/json"})
        assert r.status == 400
        return (await r.json())["error"]["message"]

    msg = _run(go)
    assert msg == ("The request body is not valid UTF-8 at byte 28 (0xff): invalid start byte. "
                   "Send the JSON text encoded as UTF-8.")


def test_one_access_line_per_request_and_errors_carry_a_request_id(caplog):
    async def go(c):
        await c.get("/v1/models")
        await c.post("/v1/completions", json={"model": "nope", "prompt": "x"})
        await c.get("/stats")  # a bug behind it: a 500

    with caplog.at_level(logging.INFO, logger="warmserve.access"):
        _run(go)
    lines = [r.getMessage() for r in caplog.records if r.name == "warmserve.access"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("GET /v1/models model=- status=200 ")
    assert lines[1].startswith("POST /v1/completions model=nope status=404 ")
    for field in ("prompt_tokens=", "completion_tokens=", "ttft_ms=", "queue_ms=", "total_ms="):
        assert all(field in line for line in lines)
    assert all(" id=req-" in line for line in lines) and len({line.split(" id=")[1] for line in lines}) == 3
    bug = [r for r in caplog.records if r.name == "warmserve.controller" and r.levelno >= logging.ERROR]
    assert bug and lines[2].split(" id=")[1] in bug[0].getMessage()
