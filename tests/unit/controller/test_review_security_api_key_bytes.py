"""The HTTP API key when it is not valid UTF-8, from a security review: a key read from a non-UTF-8 shell
($WARMSERVE_API_KEY or --api-key, which Python decodes with surrogateescape) was accepted at start, then every
protected request was a 400 with a logged traceback whose text named a character of the key, sent to a client that
had not authenticated. The key's bytes are compared with the header's bytes: the exact key is let in, anything else
is a 401 saying nothing about the key."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestServer

from warmserve.config import ServerConfig
from warmserve.controller.api import Api
from warmserve.controller.metrics import ControllerMetrics
from warmserve.errors import InvalidArgumentError

KEY_BYTES = b"caf\xe9-secret"
KEY = os.fsdecode(KEY_BYTES)  # what os.environ / sys.argv hold for these bytes (surrogateescape): 'caf\udce9-secret'


class _Models:
    metrics = ControllerMetrics()

    def model_names(self):
        return ["m"]

    def model(self, name):  # what /v1/models lists of it
        return SimpleNamespace(name=name, max_context=64)

    def health(self):
        return {"ok": True, "workers": 1}

    def stats(self):
        return {"workers": []}


async def _raw(port: int, path: str, auth: bytes) -> tuple[int, bytes]:
    """A request with the header's bytes as given (an HTTP client library would encode the header itself)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode() + auth + b"\r\n")
    data = await r.read()
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_a_non_utf8_key_lets_in_its_exact_bytes_and_says_nothing_of_itself_to_others(caplog):
    async def main():
        async with TestServer(Api(_Models(), api_key=KEY).app(), host="127.0.0.1") as s:
            return {name: await _raw(s.port, path, h) for name, path, h in [
                ("exact", "/v1/models", b"Authorization: Bearer " + KEY_BYTES + b"\r\n"),
                ("exact stats", "/stats", b"Authorization: bearer " + KEY_BYTES + b"\r\n"),
                ("utf-8 of the text", "/v1/models", b"Authorization: Bearer " + "café-secret".encode() + b"\r\n"),
                ("wrong", "/v1/models", b"Authorization: Bearer nope\r\n"),
                ("prefix", "/v1/models", b"Authorization: Bearer caf\xe9\r\n"),
                ("none", "/v1/models", b""),
            ]}

    got = asyncio.run(main())
    assert got["exact"][0] == 200, got["exact"]
    assert b'"m"' in got["exact"][1]
    assert got["exact stats"] == (200, b'{"workers":[]}'), got["exact stats"]
    for name in ("utf-8 of the text", "wrong", "prefix", "none"):
        status, body = got[name]
        assert status == 401, (name, status, body)
        assert b"Bearer <key>" in body
        for leak in (b"caf", b"secret", b"udce9", b"\\xe9", b"\xe9", b"utf-8", b"codec"):
            assert leak not in body, (name, leak, body)
    assert "Traceback" not in caplog.text and "UnicodeEncodeError" not in caplog.text


@pytest.mark.parametrize("key", ["a\ud800b", "\udfff"])
def test_a_key_no_client_can_send_is_refused_at_start_without_showing_it(key):
    # A lone surrogate that no byte decodes to (only \udc80-\udcff stand for bytes): no header can carry it.
    for make in (lambda: ServerConfig(api_key=key), lambda: Api(controller=None, api_key=key)):
        with pytest.raises(InvalidArgumentError, match="no client could send") as e:
            make()
        assert key not in str(e.value) and "\\ud" not in str(e.value)
    assert ServerConfig(api_key=KEY).api_key == KEY  # a key of bytes from the shell is fine
