"""The HTTP layer's own rules (API key, unknown routes, error shapes), served by aiohttp on a real socket. The
controller behind it is a two-method stand-in: generation through the real controller is tested in
tests/integration/test_server.py."""

import asyncio
from types import SimpleNamespace

from aiohttp.test_utils import TestClient, TestServer

from warmserve.controller.api import Api
from warmserve.controller.metrics import ControllerMetrics
from warmserve.errors import UnknownModelError


class Models:
    metrics = ControllerMetrics()

    def model_names(self):
        return ["m"]

    def model(self, name):
        if name == "m":  # what /v1/models lists of it; nothing is generated here
            return SimpleNamespace(name="m", max_context=64)
        raise UnknownModelError(f"the model {name!r} does not exist", param="model")

    def health(self):
        return {"ok": False, "workers": 0}


def run(coro_fn, api_key=""):
    async def main():
        async with TestClient(TestServer(Api(Models(), api_key=api_key).app())) as c:
            return await coro_fn(c)

    return asyncio.run(main())


def test_api_key_required_on_v1_only():
    async def go(c):
        r = await c.get("/v1/models")
        assert r.status == 401
        body = await r.json()
        assert body["error"]["code"] == "invalid_api_key" and "Bearer" in body["error"]["message"]
        r = await c.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status == 401
        r = await c.get("/v1/models", headers={"Authorization": "Bearer k"})
        assert r.status == 200 and [(d["id"], d["max_model_len"]) for d in (await r.json())["data"]] == [("m", 64)]
        r = await c.get("/health")  # probes need no key; no live worker means 503
        assert r.status == 503
        r = await c.get("/metrics")
        assert r.status == 200 and "warmserve_ttft_seconds" in await r.text()

    run(go, api_key="k")


def test_errors_have_openai_shape():
    async def go(c):
        r = await c.get("/v1/nothing")
        assert r.status == 404 and set((await r.json())["error"]) == {"message", "type", "param", "code"}
        r = await c.get("/v1/completions")
        assert r.status == 405
        r = await c.post("/v1/completions", data=b"[1,")
        assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"
        r = await c.post("/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status == 404 and (await r.json())["error"]["param"] == "model"

    run(go)


def test_a_seed_beyond_64_bits_is_a_400_before_any_work():
    """Such a seed cannot travel in MessagePack: it used to fail after the request was queued (a 500, and the
    request leaked). It is refused while parsing, before the model is even looked up."""
    async def go(c):
        for seed in (2 ** 64, -(2 ** 63) - 1):
            r = await c.post("/v1/completions", json={"model": "m", "prompt": "hi", "seed": seed})
            assert r.status == 400
            err = (await r.json())["error"]
            assert err["param"] == "seed" and "64 bits" in err["message"]

    run(go)


class OneModel(Models):
    """The stand-in with one real model description (the demo checkpoint's tokenizer and context), named as on the
    Hub; nothing is ever generated (every request here is refused before)."""

    def __init__(self, model):
        self._m = model

    def model_names(self):
        return ["org/llama-20m"]

    def model(self, name):
        if name != "org/llama-20m":
            return super().model(name)
        return self._m


def _run_with(model, coro_fn, **kw):
    async def main():
        async with TestClient(TestServer(Api(OneModel(model), **kw).app())) as c:
            return await coro_fn(c)

    return asyncio.run(main())


def test_requests_that_can_never_run_are_400_naming_the_parameter(model):
    """Found in review: n above the server's concurrency got a 429 ("retry later") forever, and a huge max_tokens
    was refused as a prompt too long for "the 0 tokens" left."""
    chat = {"model": "org/llama-20m", "messages": [{"role": "user", "content": "hi"}]}

    async def go(c):
        r = await c.post("/v1/chat/completions", json={**chat, "n": 3, "max_tokens": 2})
        err = (await r.json())["error"]
        assert r.status == 400 and err["param"] == "n" and "max_concurrent_requests" in err["message"]
        for body in ({**chat, "max_tokens": 10 ** 30}, {"model": "org/llama-20m", "prompt": "hi", "max_tokens": 2048}):
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            r = await c.post(path, json=body)
            err = (await r.json())["error"]
            assert r.status == 400 and err["param"] == "max_tokens" and "2048" in err["message"], err
        r = await c.get("/v1/models/org/llama-20m")  # a Hugging Face name, with its "/"
        assert r.status == 200 and (await r.json())["id"] == "llama-20m"

    _run_with(model, go, max_concurrent_requests=2)
