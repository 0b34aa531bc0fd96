"""The other choices of an n = 2 request one of whose choices fails after it was submitted end as outcome "error",
not "abort": the client did not go away (found in review: Choices aborted them with the default reason before the
handler could say why, streamed or whole, before the first piece or after the 200)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller_harness import HttpController, demo_path
from warmserve.controller.api import Api
from warmserve.controller.errors import OverloadedError

MODEL = "llama-20m"


@pytest.fixture(scope="module")
def model():
    from warmserve.config import ModelSpec
    from warmserve.controller.models import controller_model

    return controller_model(ModelSpec(path=demo_path()))


class _Controller(HttpController):
    def on_abort(self, req) -> None:  # counted at once, as Controller._abort counts a running request
        self.metrics.request_done(req, "abort")


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
