"""The replay client against a real local SSE server that frames events with CRLF or CR (the SSE spec allows both;
sse-starlette uses CRLF) or ends without the last blank line, and one that answers 200 without any event. Found in
review: events were split on LF LF only, so such streams parsed nothing and came back "ok" with the whole latency
as TTFT and 0 tokens."""

import asyncio
import json

from aiohttp import web

from completions_server import replay_against
from warmserve.workload.replay_client import ReplayRequest

TOKENS = 5
GAP_S = 0.1
# (line end, event end, the last event's blank line sent)
FRAMES = {"lf": (b"\n", b"\n\n", True), "crlf": (b"\r\n", b"\r\n\r\n", True), "cr": (b"\r", b"\r\r", True),
          "crlf-no-last-blank": (b"\r\n", b"\r\n\r\n", False)}


def _events(eol: bytes) -> list[bytes]:
    evs = [b"event: completion" + eol + b"data: " + json.dumps({"choices": [{"text": f"t{i}", "index": 0}]}).encode()
           for i in range(TOKENS)]
    evs.append(b"data: " + json.dumps({"choices": [], "usage": {"completion_tokens": TOKENS}}).encode())
    return evs + [b"data: [DONE]"]


async def _handler(request):
    body = await request.json()
    if body["model"] == "not-sse":
        return web.json_response({"choices": [{"text": "hello"}], "usage": {"completion_tokens": 1}})
    eol, end, last_blank = FRAMES[body["model"]]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    evs = _events(eol)
    for i, ev in enumerate(evs):
        await asyncio.sleep(GAP_S)
        msg = ev + (end if i + 1 < len(evs) or last_blank else eol)
        cut = len(ev) + 1  # a chunk ends between a CR and its LF: the client must not split a line there
        await resp.write(msg[:cut])
        await asyncio.sleep(0.01)
        await resp.write(msg[cut:])
    await resp.write_eof()
    return resp


def test_crlf_cr_and_unterminated_streams_parse_and_an_eventless_200_is_an_error():
    async def go():
        return await replay_against(_handler, [ReplayRequest(0.0, m, [5, 6, 7], TOKENS) for m in [*FRAMES, "not-sse"]],
                                    10.0)

    outs = {o.model: o for o in asyncio.run(go())}
    for name in FRAMES:
        o = outs[name]
        assert o.status == "ok" and o.completion_tokens == TOKENS, (name, o)
        # TTFT is not the whole latency: the server spaces the tokens at least GAP_S apart and ends after the
        # last, so the first was seen at least the gaps between the tokens before the end (a lower bound: a loaded
        # machine only lengthens the gaps; a stream parsed only at its end shows none)
        assert o.end_s - o.first_s >= (TOKENS - 1) * GAP_S, (name, o)
        assert o.tpot_s == o.tpot_s, (name, o)
    bad = outs["not-sse"]
    assert bad.status == "error" and "no SSE data event" in bad.error and "hello" in bad.error, bad


def test_events_split_the_same_whatever_the_chunks():
    from warmserve.workload.replay_client import _SSEEvents

    stream = b"".join(ev + b"\r\n\r\n" for ev in _events(b"\r\n"))
    want = [ev.replace(b"\r\n", b"\n") for ev in _events(b"\r\n")]
    for size in (1, 2, 3, 7, len(stream)):
        sse = _SSEEvents()
        got = [ev for i in range(0, len(stream), size) for ev in sse.feed(stream[i:i + size])]
        assert got == want and sse.close() == b"", size
