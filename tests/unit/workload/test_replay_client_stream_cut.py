"""The replay client against a stream cut short (found in review): a 200 SSE stream that sent one piece of text and
closed without a finish_reason, a usage chunk or ``data: [DONE]`` (the engine died mid-answer) came back "ok".
Such a stream is an ``error`` ("stream ended early") that keeps the time of its first text, so bench replay still
counts it as answered (its TTFT) but not as completed."""

import asyncio
import json

from aiohttp import web

from completions_server import replay_against
from warmserve.workload.replay_client import ReplayRequest


def _ev(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


STREAMS = {
    # one piece of text, then the connection ends: no finish_reason, no usage, no [DONE]
    "cut": [_ev({"choices": [{"index": 0, "text": "Hello", "finish_reason": None}]})],
    # nothing but an empty first event (a role chunk, say), then the end
    "cut-no-text": [_ev({"choices": [{"index": 0, "text": "", "finish_reason": None}]})],
    # whole answers: [DONE] without a finish_reason (the framing test's server), a finish_reason without [DONE]
    "done": [_ev({"choices": [{"index": 0, "text": "Hi"}]}), _ev({"choices": [], "usage": {"completion_tokens": 1}}),
             b"data: [DONE]\n\n"],
    "finished": [_ev({"choices": [{"index": 0, "text": "Hi", "finish_reason": "length"}]}),
                 _ev({"choices": [], "usage": {"completion_tokens": 1}})],
}


async def _handler(request):
    body = await request.json()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for ev in STREAMS[body["model"]]:
        await resp.write(ev)
    await resp.write_eof()
    return resp


def test_a_stream_cut_short_is_an_error_that_keeps_its_first_token():
    outs = {o.model: o for o in asyncio.run(replay_against(
        _handler, [ReplayRequest(0.0, m, [5, 6, 7], 64) for m in STREAMS], 5.0))}
    cut = outs["cut"]
    assert cut.status == "error" and "stream ended early" in cut.error, cut
    assert cut.first_s == cut.first_s and cut.end_s == cut.end_s and cut.first_s <= cut.end_s  # TTFT kept
    assert cut.tpot_s != cut.tpot_s  # not a completed answer
    none = outs["cut-no-text"]
    assert none.status == "error" and "stream ended early" in none.error
    assert none.first_s != none.first_s  # no text came: no first token (not the end, as for a whole answer)
    for name in ("done", "finished"):
        assert outs[name].status == "ok" and outs[name].completion_tokens == 1, outs[name]
