"""A min_tokens that alone leaves the model no room for a prompt is a 400 with OpenAI's code
``context_length_exceeded`` on both routes, whatever max_tokens says: found in review, a completion's min_tokens past
the context was refused as above the default max_tokens of 16 with no code, where a chat's (no limit set) had it.
A min_tokens above max_tokens that fits the context stays a plain bad value (no code), on both routes. Through the
HTTP layer on a real socket, the demo model's real tokenizer and context; small bodies (parsed on the loop) and ones
over api.INLINE_BODY_BYTES (parsed on a thread)."""

import asyncio

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from controller_harness import MODEL, HttpController
from warmserve.controller.api import INLINE_BODY_BYTES, Api

CODE = "context_length_exceeded"


def _post_all(model, posts: list[tuple[str, dict]]) -> list[tuple[int, dict]]:
    async def go():
        async with TestClient(TestServer(Api(HttpController(model)).app()),
                              timeout=aiohttp.ClientTimeout(total=60)) as c:
            out = []
            for path, body in posts:
                r = await c.post(path, json=body)
                out.append((r.status, (await r.json())["error"]))
            return out

    return asyncio.run(go())


def test_min_tokens_past_the_context_has_the_code_on_both_routes(model):
    ctx = model.max_context
    chat = [{"role": "user", "content": "hi"}]
    big = "word " * (INLINE_BODY_BYTES // 5 + 100)  # a body over the inline limit: parsed off the loop
    posts = [
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "min_tokens": ctx + 100}),  # the default 16
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 100, "min_tokens": ctx}),
        ("/v1/chat/completions", {"model": MODEL, "messages": chat, "max_tokens": 10, "min_tokens": ctx + 1}),
        ("/v1/chat/completions", {"model": MODEL, "messages": chat, "max_completion_tokens": 10, "min_tokens": ctx}),
        ("/v1/chat/completions", {"model": MODEL, "messages": chat, "min_tokens": ctx + 1}),  # coded before too
        ("/v1/completions", {"model": MODEL, "prompt": big, "min_tokens": ctx + 100}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": big}], "max_tokens": 5,
                                  "min_tokens": ctx + 100}),
    ]
    for (path, body), (status, err) in zip(posts, _post_all(model, posts)):
        assert status == 400 and err["code"] == CODE and err["param"] == "min_tokens", (path, body.keys(), err)
        assert f"context of {ctx} tokens" in err["message"] and str(body["min_tokens"]) in err["message"], err


def test_min_tokens_above_max_tokens_within_the_context_stays_a_bad_value(model):
    chat = [{"role": "user", "content": "hi"}]
    posts = [
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "min_tokens": 20}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 100, "min_tokens": 200}),
        ("/v1/chat/completions", {"model": MODEL, "messages": chat, "max_completion_tokens": 10, "min_tokens": 20}),
        # a model the server does not have: the body's own 400 first, as for any bad field
        ("/v1/completions", {"model": "no-such-model", "prompt": "hi", "min_tokens": 10 ** 9}),
    ]
    limits = ["max_tokens] = [0, 16]", "max_tokens] = [0, 100]", "max_completion_tokens] = [0, 10]",
              "max_tokens] = [0, 16]"]
    for (path, body), (status, err), limit in zip(posts, _post_all(model, posts), limits):
        assert status == 400 and err["code"] is None and err["param"] == "min_tokens", (path, body, err)
        assert limit in err["message"], err
