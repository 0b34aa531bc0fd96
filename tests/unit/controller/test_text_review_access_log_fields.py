"""Found in review (names beyond ASCII): the access line's model is the client's text, and only its control
characters were escaped. A request for the model ``x status=200 prompt_tokens=999 ... id=cmpl-forged`` (a 404)
logged ``model=x status=200 prompt_tokens=999 ... id=cmpl-forged status=404 ...``: a reader of key=value fields
took the first status, 200. An 8 MiB model name was an 8 MiB log line. A served name's backslash showed as it is,
so its own text ``\\x0a`` read as an escaped newline."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from warmserve.controller.api import Api
from warmserve.controller.log_text import MAX_LOGGED_CHARS
from warmserve.controller.metrics import ControllerMetrics
from warmserve.errors import UnknownModelError

SERVED = 'org/Llämä "q" \\x0a ✨'


class Ctl:
    """Serves no request: every model a request names is unknown (a 404 after the lookup)."""

    def __init__(self):
        self.metrics = ControllerMetrics()

    def health(self):
        return {"ok": True, "workers": 1, "closing": False}

    def model_names(self):
        return [SERVED]

    def model(self, name):
        raise UnknownModelError(f"the model {name[:40]!r} does not exist", param="model")


def _access_lines(caplog, models: list[str]) -> list[str]:
    async def main():
        async with TestClient(TestServer(Api(Ctl()).app()), timeout=aiohttp.ClientTimeout(total=60)) as c:
            for m in models:
                r = await c.post("/v1/completions", json={"model": m, "prompt": "hi"})
                assert r.status == 404, await r.text()

    with caplog.at_level(logging.INFO, logger="warmserve.access"):
        asyncio.run(main())
    return [r.getMessage() for r in caplog.records if r.name == "warmserve.access"]


def _fields(line: str) -> dict[str, str]:
    """The line's key=value words, the first of each key winning (as a logfmt-ish reader takes them)."""
    out: dict[str, str] = {}
    for word in line.split(" "):
        key, eq, value = word.partition("=")
        if eq:
            out.setdefault(key, value)
    return out


def test_a_model_name_cannot_write_fields_into_the_access_line(caplog):
    forged = "x status=200 prompt_tokens=999 completion_tokens=999 ttft_ms=1.0 queue_ms=0.1 total_ms=5.0 id=cmpl-f"
    [line] = _access_lines(caplog, [forged])
    fields = _fields(line)
    assert fields["status"] == "404" and fields["prompt_tokens"] == "-" and fields["id"].startswith("req-"), line
    assert line.startswith("POST /v1/completions model=x status\\x3d200 prompt_tokens\\x3d999 "), line


def test_a_backslash_in_a_name_is_escaped_so_its_text_is_not_read_as_an_escape(caplog):
    [line] = _access_lines(caplog, [SERVED])
    assert 'model=org/Llämä "q" \\x5cx0a ✨ status=404 ' in line, line


def test_a_huge_model_name_is_cut_in_the_access_line(caplog):
    [line] = _access_lines(caplog, ["M" * (8 << 20)])
    assert f"model={'M' * MAX_LOGGED_CHARS}...({8 << 20} chars) status=404 " in line
    assert len(line) < 2 * MAX_LOGGED_CHARS + 200
