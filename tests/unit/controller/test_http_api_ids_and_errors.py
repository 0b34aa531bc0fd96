"""The HTTP layer's fixes from the API review, served by aiohttp on a real socket with the demo model's real
tokenizer and context: the request id on every response and log line, error codes and parameter names, a quiet
401 for a non-UTF-8 key, Retry-After on overload, oversized prompts refused by their length, and the access line
of a request whose client hung up. The controller behind it is a stand-in whose requests are real ``Req`` objects
that never get a token (generation through the real controller: tests/integration/test_openai_ids_and_logprobs.py)."""

import asyncio
import json
import logging
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from warmserve.controller.api import Api
from warmserve.controller.errors import OverloadedError, TooManyRequestsError
from warmserve.controller.metrics import ControllerMetrics
from warmserve.controller.requests import Req
from warmserve.errors import UnknownModelError

MODEL = "llama-20m"
REQUEST_ID_HEADER = "x-request-id"


class Ctl:
    """Serves the demo model; ``busy`` is a model whose queue is full (503). A request submitted while another
    runs is refused (429). With ``tokens``, a request gets them at once and ends ("length"); without, it waits
    until the test ends it."""

    def __init__(self, model, tokens=None):
        self.m = model
        self.metrics = ControllerMetrics()
        self.submitted: list[Req] = []
        self.tokens = tokens

    def health(self):
        return {"ok": True, "workers": 1}

    def model_names(self):
        return [MODEL]

    def model(self, name):
        if name == "busy":
            raise OverloadedError("the queue of model 'busy' is full: retry later")
        if name != MODEL:
            raise UnknownModelError(f"the model {name!r} does not exist", param="model")
        return self.m

    def stats(self):
        raise RuntimeError("a bug in stats")

    async def submit(self, model, ids, sampling, siblings=()):
        if any(not r.done for r in self.submitted):
            raise TooManyRequestsError("too many requests in flight")
        r = Req(len(self.submitted) + 1, model, ids, sampling, timeout_s=60.0)
        r._abort_cb = lambda req: None
        self.submitted.append(r)
        if self.tokens:
            r.push(list(self.tokens))
            r.finish("length")
        return r


def _serve(ctl, go, **api_kwargs):
    async def main():
        # a bounded wait: code that wrongly admits a request must fail here, not hang
        async with TestClient(TestServer(Api(ctl, **api_kwargs).app()), timeout=aiohttp.ClientTimeout(total=30)) as c:
            return await go(c)

    return asyncio.run(main())


def _access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "warmserve.access"]


def test_every_response_carries_its_request_id_and_so_does_its_log_line(model, caplog):
    """Found in review: no request id reached the client; an error's id was only in the server's log."""
    ctl = Ctl(model, tokens=model.tokenizer.encode(" once upon a time", add_special_tokens=False))
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    async def go(c):
        got = []
        for call in (c.get("/v1/models"), c.get("/health"), c.post("/v1/embeddings", json={"input": "x"}),
                     c.post("/v1/chat/completions", json={**chat, "model": "nope"}), c.get("/stats"),
                     c.post("/v1/completions", data=b"{")):
            r = await call
            got.append((r.status, r.headers.get(REQUEST_ID_HEADER), None))
        r = await c.post("/v1/chat/completions", json=chat)
        got.append((r.status, r.headers.get(REQUEST_ID_HEADER), (await r.json())["id"]))
        r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 4, "stream": True})
        events = [line for line in (await r.text()).split("\n\n") if line.startswith("data: {")]
        assert events and all(f'"id":"{r.headers[REQUEST_ID_HEADER]}"' in e for e in events)
        got.append((r.status, r.headers.get(REQUEST_ID_HEADER), r.headers[REQUEST_ID_HEADER]))
        return got

    with caplog.at_level(logging.INFO, logger="warmserve.access"):
        got = _serve(ctl, go)
    assert [s for s, _, _ in got] == [200, 200, 404, 404, 500, 400, 200, 200]
    ids = [i for _, i, _ in got]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert all(i.startswith("req-") for i in ids[:6])
    assert ids[6] == got[6][2] and ids[6].startswith("chatcmpl-") and ids[7].startswith("cmpl-")
    lines = _access_lines(caplog)
    assert [line.rsplit(" id=", 1)[1] for line in lines] == ids


def test_unknown_routes_are_404_without_model_not_found(model):
    async def go(c):
        out = {}
        for path, body in (("/v1/embeddings", {"model": MODEL, "input": "x"}), ("/v1/responses", {"input": "x"}),
                           ("/v1/completions", {"model": "nope", "prompt": "x"})):
            r = await c.post(path, json=body)
            out[path] = (r.status, (await r.json())["error"])
        return out

    out = _serve(Ctl(model), go)
    assert out["/v1/embeddings"][0] == out["/v1/responses"][0] == 404
    assert out["/v1/embeddings"][1]["code"] is None and out["/v1/responses"][1]["code"] is None
    status, err = out["/v1/completions"]
    assert status == 404 and err["code"] == "model_not_found" and err["param"] == "model"


def test_error_parameters_are_named_as_the_client_named_them(model):
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    ctx = model.max_context

    async def go(c):
        out = []
        for path, body in (
                ("/v1/chat/completions", {**chat, "max_completion_tokens": 0}),
                ("/v1/chat/completions", {**chat, "max_completion_tokens": 10 ** 9}),
                ("/v1/chat/completions", {**chat, "logprobs": True, "top_logprobs": 30}),
                ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2, "stop_token_ids": [2 ** 70]}),
                ("/v1/completions", {"model": MODEL, "prompt": "hi", "stream_options": {"include_usage": True}}),
                ("/v1/chat/completions", {**chat, "stream": False, "stream_options": {"include_usage": True}}),
                ("/v1/completions", {"model": MODEL, "prompt": [5] * ctx, "max_tokens": 1}),
                ("/v1/completions", {"model": MODEL, "prompt": "hi " * (ctx * model.max_token_chars), "max_tokens": 1}),
                ("/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": "hi " * ctx}],
                                          "max_tokens": 1})):
            r = await c.post(path, json=body)
            err = (await r.json()).get("error", {})
            out.append((r.status, err.get("param"), err.get("code")))
        return out

    got = _serve(Ctl(model, tokens=[5, 6]), go)
    assert got == [
        (400, "max_completion_tokens", None),
        (400, "max_completion_tokens", "context_length_exceeded"),
        (400, "top_logprobs", None),
        (400, "stop_token_ids", None),
        (400, "stream_options", None),
        (400, "stream_options", None),
        (400, "prompt", "context_length_exceeded"),
        (400, "prompt", "context_length_exceeded"),
        (400, "messages", "context_length_exceeded"),
    ]


def test_a_non_utf8_byte_in_the_api_key_is_a_quiet_401(model, caplog):
    """Found in review: a 400 with a codec message, and an ERROR traceback in the log."""
    async def go(c):
        out = []
        for value in (b"Bearer secr\xffet", "Bearer s\u00e9cret".encode(), b"Bearer secret"):
            reader, writer = await asyncio.open_connection(c.server.host, c.server.port)
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: " + value
                         + b"\r\nConnection: close\r\n\r\n")
            await writer.drain()
            data = await reader.read()
            writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            out.append((head.split(b"\r\n")[0].decode(), body))
        return out

    with caplog.at_level(logging.INFO):
        got = _serve(Ctl(model), go, api_key="secret")
    assert [line for line, _ in got] == ["HTTP/1.1 401 Unauthorized"] * 2 + ["HTTP/1.1 200 OK"]
    assert all(b"invalid_api_key" in body for _, body in got[:2])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_overload_refusals_say_when_to_retry(model):
    ctl = Ctl(model)

    async def go(c):
        out = []
        r = await c.post("/v1/completions", json={"model": "busy", "prompt": "hi"})
        out.append((r.status, r.headers.get("Retry-After")))
        first = asyncio.ensure_future(c.post("/v1/completions", json={"model": MODEL, "prompt": "hi"}))
        while not ctl.submitted:
            await asyncio.sleep(0.01)
        r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
        out.append((r.status, r.headers.get("Retry-After")))
        ctl.submitted[0].finish("length")
        r = await first
        out.append((r.status, r.headers.get("Retry-After")))
        return out

    got = _serve(ctl, go)
    assert [s for s, _ in got] == [503, 429, 200]
    assert got[0][1] is not None and int(got[0][1]) >= 1 and got[1][1] == got[0][1] and got[2][1] is None


def test_an_oversized_token_list_is_refused_by_its_length_before_its_items_are_walked(model):
    """Found in review: millions of ids were checked one by one on the event loop before their count was compared
    with the context. Items past the context that are not token ids at all do not matter: the length refuses the
    list first (walking it would have refused it for an item's type)."""
    ctx = model.max_context
    bad_tail = [7] * ctx + ["not an id", None, 1.5]

    async def go(c):
        out = []
        for prompt in (bad_tail, [[7] * (ctx + 1) + ["x"]], [7, "x"], [7, True], [7, model.tokenizer.vocab_size]):
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1})
            err = (await r.json())["error"]
            out.append((r.status, err["code"], err["message"]))
        return out

    got = _serve(Ctl(model), go)
    assert f"the prompt has {ctx + 3} tokens" in got[0][2], got[0]
    assert [(s, code) for s, code, _ in got[:2]] == [(400, "context_length_exceeded")] * 2
    # within the context, the items are still checked
    assert [s for s, _, _ in got[2:]] == [400] * 3 and all(code is None for _, code, _ in got[2:])
    assert "token ids" in got[2][2] and "token ids" in got[3][2] and "outside the vocabulary" in got[4][2]


def test_a_request_whose_client_hung_up_is_logged_as_499(model, caplog):
    """Found in review: aiohttp cancels the handler of a client that hung up, and the guard let the cancellation
    through before its access-log line."""
    ctl = Ctl(model)

    async def go(c):
        url = f"http://{c.server.host}:{c.server.port}/v1/completions"
        async with aiohttp.ClientSession() as s:
            call = asyncio.ensure_future(s.post(url, json={"model": MODEL, "prompt": "hi", "max_tokens": 4}))
            while not ctl.submitted:
                await asyncio.sleep(0.01)
            call.cancel()  # the client gives up: its connection closes
            with pytest.raises(asyncio.CancelledError):
                await call
        deadline = time.monotonic() + 10
        while not ctl.submitted[0].done and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.INFO, logger="warmserve.access"):
        _serve(ctl, go)
    assert ctl.submitted[0].done  # the request was aborted with its handler
    lines = _access_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith(f"POST /v1/completions model={MODEL} status=499 "), lines
    assert " id=cmpl-" in lines[0]


@pytest.mark.parametrize("path,extra", [
    ("/v1/completions", {"prompt": "hi", "echo": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}),
])
def test_with_include_usage_every_chunk_but_the_last_has_a_null_usage(model, path, extra):
    """OpenAI's contract for stream_options.include_usage: every chunk carries "usage": null and one last chunk,
    with no choices, carries the totals (found in review: the key was missing from the other chunks). Without
    the option, no chunk has the key."""
    ctl = Ctl(model, tokens=model.tokenizer.encode(" once upon", add_special_tokens=False))

    async def go(c):
        out = []
        for options in ({"include_usage": True}, None):
            body = {"model": MODEL, "max_tokens": 4, "stream": True, **extra}
            if options:
                body["stream_options"] = options
            r = await c.post(path, json=body)
            assert r.status == 200
            text = await r.text()
            out.append([json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")])
        return out

    with_usage, without = _serve(ctl, go)
    *chunks, last = with_usage
    assert chunks and all("usage" in c and c["usage"] is None and c["choices"] for c in chunks), chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == len(ctl.tokens) * extra.get("n", 1)
    assert without and all("usage" not in c for c in without)


def test_a_bug_mid_stream_ends_the_stream_with_a_500_event_and_a_logged_trace(model, caplog):
    """Found in review: an exception that is no WarmServeError (a bug) raised after a stream's headers went out
    reached the guard, whose fresh 500 could not be sent on the started stream: the client's connection stayed
    open with nothing more coming (a read waited out its 10 s here). Now it gets an error event and [DONE], and
    the trace is logged once."""
    ctl = Ctl(model)

    async def go(c):
        async def fail_later():
            while not ctl.submitted:
                await asyncio.sleep(0.01)
            r = ctl.submitted[0]
            r.push(model.tokenizer.encode(" ok", add_special_tokens=False)[:1])
            await asyncio.sleep(0.1)
            r.fail(RuntimeError("a bug"))

        failing = asyncio.ensure_future(fail_later())
        r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 5, "stream": True})
        body = await asyncio.wait_for(r.text(), 10)
        await failing
        return r.status, body

    with caplog.at_level(logging.INFO):
        status, body = _serve(ctl, go)
    events = [e[len("data: "):] for e in body.split("\n\n") if e]
    assert status == 200 and events[-1] == "[DONE]", body
    err = json.loads(events[-2])["error"]
    assert err["type"] == "server_error" and "RuntimeError: a bug" in err["message"], err
    traces = [r for r in caplog.records if r.exc_info and "mid-stream" in r.getMessage()]
    assert len(traces) == 1 and traces[0].levelno == logging.ERROR, [r.getMessage() for r in caplog.records]
    assert "status=500" in _access_lines(caplog)[-1]
    # the warning says the client had a 200 (found in review: "answered 500", which no client saw)
    assert any("answered 200, then its stream ended with an error event of 500" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
