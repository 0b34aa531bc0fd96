"""``POST /tokenize`` and ``/detokenize`` (vLLM's routes), served by aiohttp on a real socket over the demo model's
own tokenizer: a count is what the completion and chat routes would make of the same prompt."""

import asyncio

from aiohttp.test_utils import TestClient, TestServer

from warmserve.controller.api import Api
from warmserve.controller.frontend import prepare
from warmserve.controller.metrics import ControllerMetrics
from warmserve.errors import UnknownModelError


class Models:
    metrics = ControllerMetrics()

    def __init__(self, model):
        self.m = model

    def model_names(self):
        return [self.m.name]

    def model(self, name):
        if name == self.m.name:
            return self.m
        raise UnknownModelError(f"the model {name!r} does not exist", param="model")


def run(model, coro_fn, api_key=""):
    async def main():
        async with TestClient(TestServer(Api(Models(model), api_key=api_key).app())) as c:
            return await coro_fn(c)

    return asyncio.run(main())


def test_tokenize_counts_as_the_generation_routes_read_a_prompt_and_detokenize_inverts_it(model):
    chat = [{"role": "user", "content": "Hello there"}]

    async def go(c):
        r = await c.post("/tokenize", json={"model": model.name, "prompt": "Hello there, world"})
        assert r.status == 200, await r.text()
        body = await r.json()
        want = prepare(model, "Hello there, world", max_tokens=1)  # the completions route's ids
        assert body == {"count": len(want), "max_model_len": model.max_context, "tokens": want}

        r = await c.post("/tokenize", json={"model": model.name, "prompt": "Hello", "add_special_tokens": False})
        plain = (await r.json())["tokens"]
        assert plain == list(model.tokenizer.encode("Hello", add_special_tokens=False))

        r = await c.post("/tokenize", json={"model": model.name, "messages": chat})
        assert (await r.json())["tokens"] == prepare(model, messages=chat, max_tokens=1)  # the chat route's

        r = await c.post("/tokenize", json={"model": model.name, "prompt": [3, 4, 5]})
        assert (await r.json())["tokens"] == [3, 4, 5]

        r = await c.post("/detokenize", json={"model": model.name, "tokens": plain})
        assert r.status == 200 and await r.json() == {"prompt": "Hello"}

    run(model, go)


def test_tokenizer_routes_refuse_bad_input_with_openai_errors_and_need_the_key(model):
    async def go(c):
        auth = {"Authorization": "Bearer k"}
        r = await c.post("/tokenize", json={"model": model.name, "prompt": "x"})
        assert r.status == 401  # as /v1 is: the key holder's tokenizer
        r = await c.post("/detokenize", json={"model": model.name, "tokens": [1]})
        assert r.status == 401
        too_long = "context_length_exceeded"  # both routes' over-the-context refusal, as the generation routes'
        cases = [
            ("/tokenize", {"model": model.name}, 400, "exactly one of prompt", None),
            ("/tokenize", {"model": model.name, "prompt": "x", "messages": []}, 400, "exactly one of prompt", None),
            ("/tokenize", {"model": "nope", "prompt": "x"}, 404, "does not exist", "model_not_found"),
            ("/tokenize", {"model": model.name, "prompt": [model.tokenizer.vocab_size]}, 400, "outside the vocab",
             None),
            ("/tokenize", {"model": model.name, "prompt": "ab " * (model.max_context * 8)}, 400, "context", too_long),
            ("/tokenize", {"model": model.name, "messages": [{"role": "tool", "content": "x"}]}, 400, "tool", None),
            ("/detokenize", {"model": model.name, "tokens": [-1]}, 400, "outside the vocab", None),
            ("/detokenize", {"model": model.name, "tokens": "abc"}, 400, "tokens", None),
            ("/detokenize", {"model": model.name, "tokens": [0] * (model.max_context + 1)}, 400, "at most", too_long),
        ]
        for path, body, status, said, code in cases:
            r = await c.post(path, json=body, headers=auth)
            err = (await r.json())["error"]
            assert (r.status, said in err["message"], err["code"]) == (status, True, code), (path, body, r.status, err)

    run(model, go, api_key="k")
