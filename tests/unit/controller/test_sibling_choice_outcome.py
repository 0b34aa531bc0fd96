"""The other choices of an n = 2 request one of whose choices fails after it was submitted end as outcome "error",
not "abort": the client did not go away (found in review: Choices aborted them with the default reason before the
handler could say why, streamed or whole, before the first piece or after the 200)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller_harness import demo_path
from warmserve.controller.api import Api
from warmserve.controller.errors import OverloadedError
from warmserve.controller.metrics import ControllerMetrics
from warmserve.controller.requests import Req

MODEL = "llama-20m"


@pytest.fixture(scope="module")
def model():
    from warmserve.config import ModelSpec
    from warmserve.controller.models import controller_model

    return controller_model(ModelSpec(path=demo_path()))


class _Controller:
    """What the HTTP layer asks of the controller, counting ended requests as Controller._abort does."""

    def __init__(self, model):
        self.m, self.metrics, self.submitted = model, ControllerMetrics(), []

    def health(self):
        return {"ok": True, "workers": 1}

    def model_names(self):
        return [MODEL]

    def model(self, name):
        return self.m

    async def submit(self, model, ids, sampling, siblings=()):
        r = Req(len(self.submitted) + 1, model, ids, sampling, timeout_s=60.0)
        r._abort_cb = lambda req: self.metrics.request_done(req, "abort")
        self.submitted.append(r)
        return r


@pytest.mark.parametrize("stream, after_first_piece", [(False, False), (True, False), (True, True)])
def test_the_sibling_of_a_failed_choice_ends_as_an_error(model, stream, after_first_piece):
    ctl = _Controller(model)
    token = model.tokenizer.encode(" hi", add_special_tokens=False)[0]

    async def fail_the_first():
        while len(ctl.submitted) < 2:
            await asyncio.sleep(0.01)
        if after_first_piece:
            for r in ctl.submitted:
                r.push([token])
            await asyncio.sleep(0.1)
        failed = ctl.submitted[0]
        failed.fail(OverloadedError("the worker refused it"))  # as the controller ends a request on P.Error
        ctl.metrics.request_done(failed, "error")

    async def main():
        async with TestClient(TestServer(Api(ctl).app()), timeout=aiohttp.ClientTimeout(total=30)) as c:
            failing = asyncio.ensure_future(fail_the_first())
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 4, "n": 2,
                                                      "stream": stream})
            await r.text()
            await failing
            return r.status

    status = asyncio.run(main())
    assert status == (200 if after_first_piece else 503)
    assert ctl.metrics.requests.get(model=MODEL, outcome="error") == 2
    assert ctl.metrics.requests.get(model=MODEL, outcome="abort") == 0
