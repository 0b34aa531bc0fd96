"""An over-long stop_token_ids list is a 400 naming it, before a request reaches any worker. Found in review: 1.5M
ids (a 9 MB body, under the size limit) were taken and scanned per generated token on the instance's engine loop,
slowing every request batched beside it. Served by aiohttp on a real socket with the demo model's real tokenizer;
the controller behind it is a stand-in whose requests are real ``Req`` objects."""

import asyncio

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from controller_harness import HttpController
from warmserve.controller.api import Api

MODEL = "llama-20m"
LIMIT = 1 << 18  # sampling.MAX_STOP_TOKEN_IDS, as docs/api.md states it


class Ctl(HttpController):
    """Each request gets two tokens at once and ends ("length")."""

    async def submit(self, model, ids, sampling, siblings=()):
        r = await super().submit(model, ids, sampling)
        r.push([5, 6])
        r.finish("length")
        return r


def test_a_stop_token_ids_list_over_the_limit_is_a_400_naming_it(model):
    ctl = Ctl(model)
    completion = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    async def go():
        async with TestClient(TestServer(Api(ctl).app()), timeout=aiohttp.ClientTimeout(total=60)) as c:
            out = []
            for path, body, ids in (("/v1/completions", completion, [8191] * 1_500_000),
                                    ("/v1/completions", completion, list(range(LIMIT + 1))),
                                    ("/v1/chat/completions", chat, [2] * (LIMIT + 1)),
                                    ("/v1/completions", completion, [2] * LIMIT)):
                r = await c.post(path, json={**body, "stop_token_ids": ids})
                out.append((r.status, await r.json()))
            return out

    *refused, accepted = asyncio.run(go())
    for status, body in refused:
        assert status == 400 and body["error"]["param"] == "stop_token_ids", body
        assert str(LIMIT) in body["error"]["message"]
    assert accepted[0] == 200 and accepted[1]["usage"]["completion_tokens"] == 2
    assert len(ctl.submitted) == 1 and len(ctl.submitted[0].sampling.stop_token_ids) == LIMIT
