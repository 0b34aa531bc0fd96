"""The replay client against a real local SSE server whose answers are not OpenAI's exact shape: an error event
as plain text (TGI and others), a null token count, an event the client cannot read. Every request still ends in
exactly one outcome, with the reason kept."""

import asyncio
import json

from aiohttp import web

from completions_server import replay_against
from warmserve.workload.replay_client import OUTCOMES, ReplayRequest

BODIES = {
    "str-error": [{"error": "model overloaded"}],
    "dict-error": [{"error": {"message": "worker lost", "code": 503}}],
    "null-error": [{"error": None, "choices": [{"text": "hi", "finish_reason": "length"}]},
                   {"choices": [], "usage": {"completion_tokens": 1}}],
    "null-completion": [{"choices": [{"text": "hi", "finish_reason": None}]},
                        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": None}}],
    "list-event": [[1, 2, 3]],
    "bad-usage": [{"choices": [{"text": "hi"}], "usage": {"completion_tokens": "many"}}],
    "ok": [{"choices": [{"text": "hi", "finish_reason": "length"}]},
           {"choices": [], "usage": {"completion_tokens": 2}}],
}


async def _handler(request):
    body = await request.json()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for ev in BODIES[body["model"]]:
        await resp.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


def test_every_answer_shape_ends_in_one_outcome():
    async def go():
        done = []
        outs = await replay_against(_handler, [ReplayRequest(0.0, m, [5, 6, 7], 4) for m in BODIES], 5.0,
                                    progress=done.append)
        return outs, done

    outs, done = asyncio.run(go())
    by = {o.model: o for o in outs}
    assert len(done) == len(BODIES) and all(o.status in OUTCOMES for o in outs)
    assert by["str-error"].status == "stream_error" and by["str-error"].error == "model overloaded"
    assert by["dict-error"].status == "stream_error" and by["dict-error"].error == "worker lost"
    assert by["null-error"].status == "ok" and by["null-error"].completion_tokens == 1
    assert by["null-completion"].status == "ok" and by["null-completion"].completion_tokens == 0
    assert by["null-completion"].first_s == by["null-completion"].first_s  # answered: its text arrived
    assert by["list-event"].status == "error" and by["list-event"].error.startswith("AttributeError")
    assert by["bad-usage"].status == "error" and by["bad-usage"].error.startswith("ValueError")
    assert by["ok"].status == "ok" and by["ok"].completion_tokens == 2
    for o in outs:  # an outcome that is not "unanswered" has its end time
        assert o.status == "unanswered" or o.end_s == o.end_s
