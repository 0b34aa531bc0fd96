"""The HTTP layer's limits and its log, from the API review: deeply nested JSON is a 400, a top_k beyond 64 bits is
refused while parsing (naming top_k), a client cannot forge access-log lines, /health's 503 is no rejection, and a
413 names the body limit. Served by aiohttp on a real socket with the demo model's real tokenizer; the controller
behind it is a stand-in whose requests are real ``Req`` objects that end at once."""

import asyncio
import logging

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from warmserve.controller.api import Api
from warmserve.controller.metrics import ControllerMetrics
from warmserve.controller.requests import Req
from warmserve.errors import UnknownModelError

MODEL = "llama-20m"
#: The server's request body limit (api.MAX_BODY_BYTES).
MAX_BODY_BYTES = 16 << 20


class Ctl:
    """Serves the demo model; a request gets two tokens at once and ends. ``healthy`` False: /health says the
    server is draining."""

    def __init__(self, model, healthy=True):
        self.m = model
        self.metrics = ControllerMetrics()
        self.submitted: list[Req] = []
        self.looked_up: list[str] = []
        self.healthy = healthy

    def health(self):
        return {"ok": self.healthy, "workers": 1, "closing": not self.healthy}

    def model_names(self):
        return [MODEL]

    def model(self, name):
        self.looked_up.append(name)
        if name != MODEL:
            raise UnknownModelError(f"the model {name!r} does not exist", param="model")
        return self.m

    async def submit(self, model, ids, sampling, siblings=()):
        r = Req(len(self.submitted) + 1, model, ids, sampling, timeout_s=60.0)
        r._abort_cb = lambda req: None
        self.submitted.append(r)
        r.push(self.m.tokenizer.encode(" ok then", add_special_tokens=False)[:2])
        r.finish("length")
        return r


def _serve(ctl, go):
    async def main():
        async with TestClient(TestServer(Api(ctl).app()), timeout=aiohttp.ClientTimeout(total=60)) as c:
            return await go(c)

    return asyncio.run(main())


def _records(caplog, name):
    return [r for r in caplog.records if r.name == name]


def test_deeply_nested_json_is_a_400_not_a_500(model, caplog):
    """Found in review: a 2 KB body of nested arrays raised RecursionError in the JSON decoder: a 500 and a logged
    traceback. 20,000 levels: past msgspec's depth limit on every Python (about 1,000 levels on 3.11, 1,500 on 3.12,
    10,000 on 3.13: found on 3.12 and 3.13, which decoded the 1,000 this had and the test failed)."""
    levels = 20_000
    deep = "[" * levels + "]" * levels
    prompt = "[" * levels + "1" + "]" * levels
    bodies = [("/v1/completions", '{"model":"%s","max_tokens":1,"prompt":%s}' % (MODEL, prompt)),
              ("/v1/chat/completions", '{"model":"%s","max_tokens":1,"messages":[{"role":"user","content":'
                                       '[{"type":"text","text":"x","extra":%s}]}]}' % (MODEL, deep))]

    async def go(c):
        out = []
        for path, body in bodies:
            r = await c.post(path, data=body.encode(), headers={"Content-Type": "application/json"})
            out.append((r.status, (await r.json())["error"]))
        return out

    with caplog.at_level(logging.INFO):
        got = _serve(Ctl(model), go)
    for status, err in got:
        assert status == 400 and err["type"] == "invalid_request_error", (status, err)
        assert "nested too deeply" in err["message"]
    assert not _records(caplog, "warmserve.controller")  # no traceback, no warning


def test_a_top_k_beyond_64_bits_or_below_minus_one_is_refused_while_parsing_naming_top_k(model):
    """Found in review: top_k 1e20 passed the checks, a model was routed (even cold-started) for it, and it failed
    on the way to the worker as a 400 blaming the prompt. -1 and 0 keep every token (vLLM's rule), as does any
    top_k at least the vocabulary's size."""
    ctl = Ctl(model)

    async def go(c):
        out = []
        for top_k in (10 ** 20, 2 ** 63, -5, -1, 0, 2 ** 63 - 1):
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2,
                                                      "top_k": top_k})
            out.append((r.status, await r.json(), len(ctl.looked_up), len(ctl.submitted)))
        return out

    got = _serve(ctl, go)
    for status, body, looked_up, submitted in got[:3]:  # -5 too: found in review, it was taken as no cut
        assert status == 400 and body["error"]["param"] == "top_k", body
        assert looked_up == submitted == 0  # refused before the model was looked up, let alone routed
    assert [s for s, *_ in got[3:]] == [200, 200, 200]
    assert [r.sampling.top_k for r in ctl.submitted] == [0, 0, 2 ** 63 - 1]


def test_a_client_cannot_write_lines_into_the_access_log(model, caplog):
    """Found in review: the access line held the path percent-decoded, so an unauthenticated GET of
    /x%0A<a whole forged line> wrote that line into the log. The path is logged as sent, and control characters
    of the path and of the model (the client's JSON text) are escaped."""
    forged = "2026-11-29 23:59:59,000 warmserve.access INFO POST /v1/completions model=llama-20m status=200 FORGED"

    async def go(c):
        r1 = await c.get("/x%0A" + forged.replace(" ", "%20"))
        r2 = await c.post("/v1/completions", json={"model": "nope\n" + forged + "\u2028x\x1b[2J", "prompt": "hi"})
        return r1.status, r2.status

    with caplog.at_level(logging.INFO, logger="warmserve.access"):
        assert _serve(Ctl(model), go) == (404, 404)
    lines = [r.getMessage() for r in _records(caplog, "warmserve.access")]
    assert len(lines) == 2
    for line in lines:
        assert "\n" not in line and "\u2028" not in line and "\x1b" not in line, line
    assert lines[0].startswith("GET /x%0A2026-11-29%2023:59:59,000%20warmserve.access%20INFO")
    assert lines[1].startswith("POST /v1/completions model=nope\\x0a2026-11-29 ") and "\\u2028x\\x1b[2J" in lines[1]


def test_health_probes_during_a_drain_are_not_rejections(model, caplog):
    """Found in review: each /health probe while the server drained logged a WARNING and counted in
    warmserve_rejected_requests_total; it stays a 503 (load balancers read it) with its access line."""
    ctl = Ctl(model, healthy=False)

    async def go(c):
        return [(await c.get("/health")).status for _ in range(3)]

    with caplog.at_level(logging.INFO):
        assert _serve(ctl, go) == [503] * 3
    assert not _records(caplog, "warmserve.controller")
    assert sum(" /health " in r.getMessage() and "status=503" in r.getMessage()
               for r in _records(caplog, "warmserve.access")) == 3
    assert ctl.metrics.rejected.get(status=503, route="/health") == 0


def test_a_body_over_the_limit_is_a_413_that_names_the_limit(model):
    ctl = Ctl(model)

    async def go(c):
        r = await c.post("/v1/completions", data=b"x" * (MAX_BODY_BYTES + 1),
                         headers={"Content-Type": "application/json"})
        return r.status, await r.json()

    status, body = _serve(ctl, go)
    assert status == 413 and f"{MAX_BODY_BYTES} bytes" in body["error"]["message"], body
    assert body["error"]["code"] == "request_too_large"
    assert ctl.metrics.rejected.get(status=413, route="/v1/completions") == 1
