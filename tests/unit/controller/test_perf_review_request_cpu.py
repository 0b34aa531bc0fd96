"""The controller's CPU per request, from the review of 2026-12-07 (``warmserve bench overhead``: 0.30 ms of
controller CPU a request on 11-28's code, 0.49-0.59 ms on 12-07's): work per request that did nothing stays cut.

- A body that has come whole with its headers is read with no timeout scope: each of the two it took armed and
  cancelled a timer (``body.read_body``); a body that has yet to come still waits under one, so a stall is a 408.
- A labelled counter or histogram looks its child up in prometheus_client once per label set (``metrics._Wrapped``):
  ``labels`` checked and sorted the names under a lock 5-6 times a request; a gauge, whose children ``clear``
  removes, still asks each time, so a series cleared and set again is exported.
- The access log's fields are not made at a level that writes no line (``Api._log``).
- A request that sends none of the fields the server does not implement is told so in one comparison, not one
  check a field (``openai_api._refuse_unsupported``: half of a small request's parse).

Served by aiohttp on a real loopback socket where a request is involved."""

import asyncio
import json
import logging

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from warmserve.controller import api, body as body_read
from warmserve.controller.api import Api
from warmserve.controller.metrics import Counter, Gauge, Histogram, Registry

from test_http_api_log_and_limits import MODEL, Ctl


def _serve_body_reader(go) -> list[tuple[bytes, int]]:
    """Runs ``go(client)`` against an app whose one route reads its body with ``read_body`` and counts the event
    loop's timers armed meanwhile; returns one (body, timers) pair per request."""
    seen: list[tuple[bytes, int]] = []

    async def handler(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        armed = 0
        call_at = loop.call_at

        def counting_call_at(*args, **kw):
            nonlocal armed
            armed += 1
            return call_at(*args, **kw)

        loop.call_at = counting_call_at
        try:
            data = await body_read.read_body(request, 1 << 20)
        finally:
            del loop.call_at  # the loop's own method again
        seen.append((data, armed))
        return web.Response(text="ok")

    async def main():
        app = web.Application()
        app.router.add_post("/read", handler)
        async with TestClient(TestServer(app), timeout=aiohttp.ClientTimeout(total=30)) as c:
            await go(c)

    asyncio.run(main())
    return seen


async def _send(c: TestClient, parts: list[bytes]) -> bytes:
    """Sends ``parts`` on a raw connection, 0.3 s apart (the handler waits for the next meanwhile), each in one
    write; returns the answer's first bytes."""
    reader, writer = await asyncio.open_connection(c.server.host, c.server.port)
    try:
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(0.3)
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()


def test_a_body_that_came_with_its_headers_arms_no_timer_and_one_that_comes_later_still_waits_under_one():
    whole = b'{"prompt": "a", "max_tokens": 1}'
    head = b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    answers = []

    async def go(c: TestClient):
        answers.append(await _send(c, [head % len(whole) + whole]))
        answers.append(await _send(c, [head % 10 + b"hello", b"world"]))

    seen = _serve_body_reader(go)
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
    assert len(seen) == 2, seen
    assert seen[0] == (whole, 0), f"a body already here armed {seen[0][1]} timers (before the review: 2)"
    body, armed = seen[1]
    assert body == b"helloworld"
    assert armed >= 1, "a body still to come was waited for with no timeout"


def test_a_labelled_counter_and_histogram_ask_prometheus_for_each_child_once_and_a_gauge_each_time():
    reg = Registry()
    counter = Counter(reg, "perf_review_requests", "requests", ("model", "outcome"))
    hist = Histogram(reg, "perf_review_seconds", "seconds", ("model",))
    gauge = Gauge(reg, "perf_review_waiting", "waiting", ("model",))
    asked = {"counter": 0, "hist": 0, "gauge": 0}
    for name, wrapped in (("counter", counter), ("hist", hist), ("gauge", gauge)):
        labels = wrapped.metric.labels

        def counting(*a, _name=name, _labels=labels, **kw):
            asked[_name] += 1
            return _labels(*a, **kw)

        wrapped.metric.labels = counting
    for i in range(50):
        counter.inc(model="m", outcome="stop")
        counter.inc(2, model="m", outcome="length")
        hist.observe(0.01 * i, model="m")
        gauge.set(i, model="m")
    assert asked["counter"] == 2, f"{asked['counter']} lookups for 2 label sets (before the review: 100)"
    assert asked["hist"] == 1, f"{asked['hist']} lookups for 1 label set (before the review: 50)"
    assert counter.get(model="m", outcome="stop") == 50 and counter.get(model="m", outcome="length") == 100
    assert hist.count(model="m") == 50
    # 1 and True are equal dict keys but other label values: each its own series
    counter.inc(model=1, outcome="stop")
    counter.inc(model=True, outcome="stop")
    assert counter.get(model="1", outcome="stop") == 1 and counter.get(model="True", outcome="stop") == 1
    gauge.clear()
    gauge.set(7, model="m")
    assert asked["gauge"] == 51
    text = reg.render()
    waiting = [s for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "perf_review_waiting"]
    assert [(s.labels, s.value) for s in waiting] == [({"model": "m"}, 7.0)], waiting
    try:
        counter.inc(model="m")
    except ValueError as e:
        assert "outcome" in str(e)
    else:
        raise AssertionError("a missing label was taken")


def test_the_access_log_makes_no_fields_at_a_level_that_writes_no_line(model, monkeypatch):
    made: list[str] = []
    field_value = api.field_value

    def counting(text):
        made.append(text)
        return field_value(text)

    monkeypatch.setattr(api, "field_value", counting)
    access = logging.getLogger("warmserve.access")
    level = access.level
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}

    async def main():
        async with TestClient(TestServer(Api(Ctl(model)).app())) as c:
            access.setLevel(logging.WARNING)
            r = await c.post("/v1/completions", json=body)
            assert r.status == 200, await r.text()
            quiet = len(made)
            access.setLevel(logging.INFO)
            r = await c.post("/v1/completions", json=body)
            assert r.status == 200, await r.text()
            return quiet, len(made) - quiet

    try:
        quiet, loud = asyncio.run(main())
    finally:
        access.setLevel(level)
    assert quiet == 0, f"{quiet} fields made for an access line not written"
    assert loud == 1, f"the access line at INFO made {loud} model fields, not 1"


def test_a_request_that_sends_no_unsupported_field_runs_none_of_their_checks_and_one_that_does_is_refused(
        monkeypatch):
    from warmserve.controller import openai_api as oa
    from warmserve.errors import InvalidArgumentError

    ran: list[str] = []
    for name, neutral in list(oa.UNSUPPORTED.items()):
        monkeypatch.setitem(oa.UNSUPPORTED, name, lambda v, _n=name, _f=neutral: ran.append(_n) or _f(v))
    plain = {"model": MODEL, "prompt": "a", "max_tokens": 1}
    oa.parse_completion(json.dumps(plain).encode())
    assert ran == [], f"{len(ran)} checks of fields not sent (before the review: all {len(oa.UNSUPPORTED)})"
    oa.parse_completion(json.dumps({**plain, "tools": [], "logit_bias": {}}).encode())  # neutral values: taken
    assert "tools" in ran and "logit_bias" in ran
    for name, value in (("tools", [{"type": "function"}]), ("logit_bias", {"1": 5}), ("suffix", "x")):
        try:
            oa.parse_completion(json.dumps({**plain, name: value}).encode())
        except InvalidArgumentError as e:
            assert name in str(e)
        else:
            raise AssertionError(f"{name}={value!r} was taken")
