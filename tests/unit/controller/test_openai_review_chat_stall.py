"""A large chat body does not stall the event loop, from the HTTP review: one of more messages than the model's
context has tokens is refused (a 400 naming ``messages``, as before) before its messages are decoded, and one that
may fit is parsed on a worker thread. Found in review: a 16 MiB body of 1M ``{"role":"user"}`` messages took 3 s of
the event loop (decoded, checked and made dicts there), and four at once stalled /health for 13 s. Served by aiohttp
on a real socket with the demo model's tokenizer and context (2048 tokens); the controller behind it is a stand-in
whose requests are real ``Req`` objects that get two tokens and end. The loop's lag is measured by a task that
sleeps 10 ms at a time."""

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from warmserve.controller import openai_api as oa, prechecks
from warmserve.controller.api import INLINE_BODY_BYTES, Api
from warmserve.controller.metrics import ControllerMetrics
from warmserve.controller.requests import Req
from warmserve.errors import PromptTooLongError, UnknownModelError

MODEL = "llama-20m"
MAX_CONTEXT = 2048  # the demo model's
#: The loop may lag this much while a large body is handled: far below the old stall (3 s per body on the
#: reviewer's machine), with room for a slow, shared machine.
MAX_LAG_S = 0.5
_MESSAGE = b'{"role":"user"},'


def _many_messages_body(size_bytes: int = (16 << 20) - 200) -> bytes:
    n = size_bytes // len(_MESSAGE)
    return (b'{"model":"%s","max_tokens":1,"messages":[' % MODEL.encode() + _MESSAGE * (n - 1)
            + b'{"role":"user"}]}')


class Ctl:
    def __init__(self, model):
        self.m = model
        self.metrics = ControllerMetrics()
        self.submitted: list[Req] = []

    def health(self):
        return {"ok": True, "workers": 1}

    def model_names(self):
        return [MODEL]

    def model(self, name):
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


async def _lag_probe(lags: list[float], step_s: float = 0.01) -> None:
    while True:
        t = time.perf_counter()
        await asyncio.sleep(step_s)
        lags.append(time.perf_counter() - t - step_s)


def _serve(ctl, go):
    async def main():
        async with TestClient(TestServer(Api(ctl).app()), timeout=aiohttp.ClientTimeout(total=120)) as c:
            lags: list[float] = []
            probe = asyncio.ensure_future(_lag_probe(lags))
            try:
                out = await go(c)
                # the probe's turn after the last stall: a stall that ended just as the answer came was otherwise
                # never recorded (the client's task resumed before the probe's, found writing test_prechecks.py)
                await asyncio.sleep(0.05)
                return out, max(lags, default=0.0)
            finally:
                probe.cancel()

    return asyncio.run(main())


async def _post(c, body: bytes):
    r = await c.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    return r.status, await r.json()


def test_a_chat_of_a_million_messages_is_refused_without_stalling_the_loop(model):
    body = _many_messages_body()
    (status, answer), lag_s = _serve(Ctl(model), lambda c: _post(c, body))
    err = answer["error"]
    assert status == 400 and err["param"] == "messages" and err["code"] == oa.CONTEXT_LENGTH_EXCEEDED, err
    assert lag_s < MAX_LAG_S, f"the event loop stalled {lag_s:.2f} s on a chat of {len(body)} bytes"
    assert f"more than {MAX_CONTEXT} messages" in err["message"], err  # refused by the count, not the template


def test_four_such_chats_at_once_leave_health_answering(model):
    """The reviewer's case: four at once stalled /health for 13 s."""
    body = _many_messages_body()

    async def go(c):
        async def health():
            worst = 0.0
            while not big.done():
                t = time.perf_counter()
                r = await c.get("/health")
                await r.read()
                worst = max(worst, time.perf_counter() - t)
                await asyncio.sleep(0.02)
            return worst

        big = asyncio.gather(*(_post(c, body) for _ in range(4)))
        worst = await health()
        return await big, worst

    (answers, worst_s), lag_s = _serve(Ctl(model), go)
    assert all(s == 400 and a["error"]["param"] == "messages" for s, a in answers), answers
    assert worst_s < MAX_LAG_S * 2, f"/health took {worst_s:.2f} s while four large chats were handled"
    assert lag_s < MAX_LAG_S * 2, f"the event loop stalled {lag_s:.2f} s"


def test_a_large_chat_that_fits_is_answered_as_a_small_one(model):
    """Over INLINE_BODY_BYTES (padded by a field the server ignores), parsed on a thread: the same prompt and the
    same 200; the same 404 for a model that does not exist; as many messages as the context has tokens are not
    refused by their count (the prompt the template makes of them is longer than the context: the usual 400)."""
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    chat = {"model": MODEL, "max_tokens": 2, "messages": messages}
    pad = "x" * (INLINE_BODY_BYTES + 1)
    at_limit = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": ""}] * MAX_CONTEXT,
                "unknown_padding": pad}

    async def go(c):
        small = await _post(c, json.dumps(chat).encode())
        large = await _post(c, json.dumps({**chat, "unknown_padding": pad}).encode())
        missing = await _post(c, json.dumps({**chat, "model": "nope", "unknown_padding": pad}).encode())
        full = await _post(c, json.dumps(at_limit).encode())
        return small, large, missing, full

    ctl = Ctl(model)
    (small, large, missing, full), _ = _serve(ctl, go)
    assert small[0] == large[0] == 200
    assert small[1]["choices"] == large[1]["choices"] and small[1]["usage"] == large[1]["usage"]
    assert ctl.submitted[0].prompt_ids == ctl.submitted[1].prompt_ids
    assert missing[0] == 404 and missing[1]["error"]["param"] == "model"
    err = full[1]["error"]
    assert full[0] == 400 and err["param"] == "messages" and err["code"] == oa.CONTEXT_LENGTH_EXCEEDED, err
    assert "the prompt has" in err["message"] and "messages holds" not in err["message"], err


@pytest.mark.parametrize("array, most, count", [
    (b"[]", 5, 0), (b" [ ] ", 5, 0), (b'[{"a": "],[,"}, [1, [2]], "x"]', 5, 3), (b"[1,2,3,4,5,6,7]", 3, 3),
    (b"[1,2,3]", 3, 3), (b'{"a": 1}', 5, None), (b"[1,,2]", 5, None), (b"[1, 2", 5, None),
    (b'["\xff"]', 5, None), (b"[" * 20_000 + b"]" * 20_000, 5, None),
])  # nested past json's depth limit on every Python (about 10,000 levels on 3.13: 5,000 were one item there)
def test_count_items_counts_the_top_level_items_up_to_most(array, most, count):
    assert prechecks.count_items(array, most) == count


def test_the_count_check_names_messages_the_count_and_the_limit():
    prechecks.check_message_count(b"[{}, {}, {}, {}]", 4)  # 4 messages, a context of 4 tokens
    with pytest.raises(PromptTooLongError) as e:
        prechecks.check_message_count(b"[" + b"{}," * 9 + b"{}]", 4)
    assert e.value.param == "messages" and e.value.messages == 5 and e.value.max_context == 4
    assert "more than 4 messages (at least 5)" in e.value.message
