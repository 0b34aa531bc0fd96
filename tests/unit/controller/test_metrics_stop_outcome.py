"""warmserve_requests_total and warmserve_request_seconds count the finish reason the client got. Found in review: a
stop string completed by the last token max_tokens allowed was answered with finish_reason "stop" and counted as
"length" (counted when the engine's final Tokens came, before the front end found the stop string in their text).
Against a scripted peer whose Generate answers tokens 5, 6, 7 (the demo tokenizer's "#", "$", "%"), ending
"length"."""

import asyncio
import gc

from aiohttp.test_utils import TestClient, TestServer

from warmserve.controller.api import Api
from warmserve.controller.frontend import TextGeneration
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, make_controller, run, until

OUTCOMES = ("stop", "length", "abort", "error")


def _counts(c) -> dict[str, float]:
    return {o: c.metrics.requests.get(model=MODEL, outcome=o) for o in OUTCOMES if
            c.metrics.requests.get(model=MODEL, outcome=o)}


def _latencies(c) -> dict[str, int]:
    return {o: c.metrics.e2e.count(model=MODEL, outcome=o) for o in OUTCOMES if
            c.metrics.e2e.count(model=MODEL, outcome=o)}


async def _started(model):
    c = make_controller(model)
    peer = Peer(await c.start())
    await c.wait_for_workers(1, 5)
    return c, peer


async def _ended_on_its_engine(c, stop=()):
    """A TextGeneration whose request has ended on its engine ("length"), none of its tokens read yet."""
    decode = c.models[MODEL].tokenizer.decode
    gen = TextGeneration(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3, stop=stop)), decode, stop)
    assert await until(lambda: gen.req.done, 5)
    return gen


def test_a_stop_string_the_last_token_completes_counts_as_stop(model):
    async def main():
        c, peer = await _started(model)
        for stop, text in ((("$%",), "#"), (("%",), "#$")):  # completed by the last token; held back or not
            before = _counts(c)
            gen = await _ended_on_its_engine(c, stop)
            assert _counts(c) == before, "counted before the front end read the text"
            assert await gen.collect() == text and gen.finish_reason == "stop"
            assert _counts(c).get("stop", 0) == before.get("stop", 0) + 1
            assert _counts(c).get("length", 0) == 0, _counts(c)
        assert _latencies(c) == {"stop": 2}
        await c.close(drain=False)
        peer.close()

    run(main())


def test_the_client_gets_stop_and_the_counter_says_stop(model):
    async def main():
        c, peer = await _started(model)
        async with TestClient(TestServer(Api(c).app())) as http:
            for stream in (False, True):
                body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "stop": ["$%"], "stream": stream}
                r = await http.post("/v1/completions", json=body)
                text = await r.text()
                assert r.status == 200 and '"finish_reason":"stop"' in text.replace(" ", ""), text
        assert _counts(c) == {"stop": 2} and _latencies(c) == {"stop": 2}
        await c.close(drain=False)
        peer.close()

    run(main())


def test_held_outcomes_are_counted_once_however_the_consumer_ends(model):
    """Not found, left unread (the client went away after the engine's end), dropped unread: counted once, as the
    engine ended it; without stop strings at once, as before; a request the client leaves while it runs is still
    an abort."""
    async def main():
        c, peer = await _started(model)
        gen = await _ended_on_its_engine(c, ("zz",))
        assert await gen.collect() == "#$%" and gen.finish_reason == "length"
        assert _counts(c) == {"length": 1}
        gen = await _ended_on_its_engine(c, ("$%",))
        gen.abort()
        gen.abort()
        assert _counts(c) == {"length": 2}
        gen = await _ended_on_its_engine(c, ("$%",))
        del gen
        gc.collect()
        assert _counts(c) == {"length": 3}
        await _ended_on_its_engine(c)
        assert _counts(c) == {"length": 4}
        peer.hold_generate = True
        decode = c.models[MODEL].tokenizer.decode
        gen = TextGeneration(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3, stop=("$%",))), decode,
                             ("$%",))
        assert await until(lambda: c.gpu_workers[0].gens, 5)
        gen.abort()
        await asyncio.sleep(0.05)
        assert _counts(c) == {"length": 4, "abort": 1}
        assert _latencies(c) == {"length": 4, "abort": 1}
        await c.close(drain=False)
        peer.close()

    run(main())
