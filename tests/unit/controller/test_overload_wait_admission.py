"""The admission of a request by the expected wait of its model's queue (controller/queue_wait.py): the drain rate is
the starts measured while the queue held requests all along; with no such measure a request is admitted whatever
is queued; a request is refused (503, the numbers, Retry-After until the queue drains to the line) only past the
timeout (WAIT_MARGIN times it while the measure is young); and a 504 carries Retry-After as the 503s do. Found in
the overload review: a flooded model's late requests waited the whole request_timeout_s for a 504 that had no
Retry-After."""

from __future__ import annotations

import asyncio
import collections
import time
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller_harness import HttpController, demo_path
from warmserve.controller import queue_wait
from warmserve.controller.api import Api
from warmserve.controller.errors import OverloadedError
from warmserve.controller.metrics import ControllerMetrics
from warmserve.controller.queue_wait import (MATURE_SPAN_S, MAX_RETRY_AFTER_S, MIN_STARTS, DrainMeter,
                                             expected_wait_s)
from warmserve.controller.requests import Req
from warmserve.errors import TimeoutError_

MODEL = "llama-20m"


def _queue(n: int, arrived_s: float, sent: int = 0) -> collections.deque:
    """``n`` requests waiting since ``arrived_s`` (monotonic), the first ``sent`` of them moved off an instance."""
    out = collections.deque()
    for i in range(n):
        r = Req(i + 1, MODEL, [1, 2], None, timeout_s=60.0)
        r.arrival_s = arrived_s
        if i < sent:
            r.sent_s = arrived_s + 0.5
        out.append(r)
    return out


def _meter(now_s: float, per_s: float, for_s: float) -> DrainMeter:
    """A meter that saw ``per_s`` starts a second of MODEL over the ``for_s`` seconds before ``now_s``."""
    m = DrainMeter()
    n = int(per_s * for_s)
    for i in range(n):
        m.started(MODEL, now_s - for_s + (i + 1) / per_s)
    return m


def _controller(queue, meter: DrainMeter, timeout_s: float):
    return SimpleNamespace(state=SimpleNamespace(queues={MODEL: queue}), metrics=SimpleNamespace(drain=meter),
                           cc=SimpleNamespace(request_timeout_s=timeout_s))


def test_the_expected_wait_is_the_queue_ahead_over_the_rate_measured_while_it_was_backlogged():
    now = time.monotonic()
    meter = _meter(now, 2.0, 20.0)  # 40 starts at 2 a second, while the queue below held requests all along
    wait, ahead, rate, span = expected_wait_s(_queue(60, now - 25.0), meter, MODEL, now)
    assert ahead == 60 and rate == pytest.approx(2.0) and wait == pytest.approx(30.0)
    assert span == pytest.approx(19.5)
    # a measure over MATURE_SPAN_S or more: 30 s of wait is refused past a timeout of 30 s, admitted at it
    with pytest.raises(OverloadedError) as e:
        queue_wait.check(_controller(_queue(60, now - 25.0), meter, 19.0), MODEL)
    assert e.value.http_status == 503 and e.value.queued == 60 and e.value.timeout_s == 19.0
    assert e.value.drain_rate_per_s == pytest.approx(2.0, rel=0.01)
    assert e.value.expected_wait_s == pytest.approx(30.0, rel=0.01)
    assert e.value.retry_after_s == 11  # the 11 s the queue ahead needs to drain to the line
    message = e.value.message
    assert "60 requests" in message and "2 a second" in message and "about 30 s" in message, message
    assert "past the 19 s" in message and "request_timeout_s" in message, message
    queue_wait.check(_controller(_queue(60, now - 25.0), meter, 30.0), MODEL)  # 30 s of wait at 30 s: admitted
    with pytest.raises(OverloadedError):  # admitted at 1.5 x (20 s) before the live review, refused now
        queue_wait.check(_controller(_queue(60, now - 25.0), meter, 20.0), MODEL)
    queue_wait.check(_controller(_queue(20, now - 25.0), meter, 10.0), MODEL)  # 10 s of wait, at 10


def test_a_young_measure_refuses_only_past_the_margin_and_retry_after_is_bounded():
    now = time.monotonic()
    young = _meter(now, 4.0, 5.0)  # 20 starts in 5 s: under MATURE_SPAN_S
    assert expected_wait_s(_queue(60, now - 6.0), young, MODEL, now)[3] < MATURE_SPAN_S
    queue_wait.check(_controller(_queue(60, now - 6.0), young, 10.0), MODEL)  # 15 s = 1.5 x 10 s: admitted
    with pytest.raises(OverloadedError) as e:
        queue_wait.check(_controller(_queue(60, now - 6.0), young, 9.0), MODEL)  # past 13.5 s
    assert e.value.retry_after_s == 2, e.value.fields  # ceil(15 - 13.5)
    with pytest.raises(OverloadedError) as e:  # 5,000 s of wait: Retry-After at most MAX_RETRY_AFTER_S
        queue_wait.check(_controller(_queue(20_000, now - 6.0), young, 9.0), MODEL)
    assert e.value.retry_after_s == MAX_RETRY_AFTER_S


def test_no_measure_admits_whatever_is_queued():
    now = time.monotonic()
    few = _meter(now, 1.0, MIN_STARTS - 1)  # one start short of a measure
    assert expected_wait_s(_queue(500, now - 30.0), few, MODEL, now) is None
    queue_wait.check(_controller(_queue(500, now - 30.0), few, 1.0), MODEL)
    queue_wait.check(_controller(_queue(500, now - 30.0), DrainMeter(), 1.0), MODEL)  # a fresh server
    # the starts of a quiet spell, before the queue began to back up, are those of arrivals, not of what the
    # instances can take: a burst queued since is not measured by them (counted, 500 queued at 1 a second is 500 s)
    quiet = _meter(now - 2.0, 1.0, 25.0)
    assert expected_wait_s(_queue(500, now - 1.0), quiet, MODEL, now) is None
    queue_wait.check(_controller(_queue(500, now - 1.0), quiet, 1.0), MODEL)
    # a window's worth of starts at one instant (a batch freed at once) is no rate either
    instant = DrainMeter()
    for _ in range(2 * MIN_STARTS):
        instant.started(MODEL, now - 1.0)
    assert expected_wait_s(_queue(500, now - 5.0), instant, MODEL, now) is None


def test_the_backlog_spans_heads_that_time_out_and_ends_when_the_queue_ran_dry():
    m = DrainMeter()
    assert m.backlogged_since(MODEL, 100.0, 104.0) == 100.0
    # the head of then timed out; the head now was already waiting at the last look: one backlog since 100
    assert m.backlogged_since(MODEL, 103.0, 108.0) == 100.0
    assert m.backlogged_since(MODEL, 107.5, 112.0) == 100.0
    # the head now came after the last look: the queue may have run dry between, a new backlog starts
    assert m.backlogged_since(MODEL, 112.5, 113.0) == 112.5


def test_requests_waiting_again_are_not_counted_ahead():
    now = time.monotonic()
    meter = _meter(now, 2.0, 20.0)
    wait, ahead, _, _ = expected_wait_s(_queue(60, now - 25.0, sent=20), meter, MODEL, now)
    assert ahead == 40 and wait == pytest.approx(20.0)
    assert expected_wait_s(_queue(5, now - 25.0, sent=5), meter, MODEL, now) is None  # nothing new waits


def test_the_meter_keeps_its_window_only():
    m = DrainMeter(window_s=10.0)
    for i in range(1000):
        m.started(MODEL, i * 0.1)  # 100 s at 10 a second
    assert len(m._starts[MODEL]) <= 100 + 64 + 1
    rate, n, _ = m.rate_per_s(MODEL, 0.0, 99.9)
    assert rate == pytest.approx(10.0) and n == 100


def test_a_metrics_first_send_feeds_the_meter():
    metrics = ControllerMetrics()
    now = time.monotonic()
    for i in range(MIN_STARTS):
        r = Req(i + 1, MODEL, [1], None, timeout_s=60.0)
        r.arrival_s = now - 10.0
        metrics.first_sent(r, 1.0 + i * 0.5)
    rate, n, span = metrics.drain.rate_per_s(MODEL, now - 10.0, now)
    assert n == MIN_STARTS and rate == pytest.approx(2.0) and span == pytest.approx(7.5)


@pytest.fixture(scope="module")
def model():
    from warmserve.config import ModelSpec
    from warmserve.controller.models import controller_model

    return controller_model(ModelSpec(path=demo_path()))


class _Queued(HttpController):
    """One model whose queue holds 60 requests that drained at 2 a second; a request submitted all the same times out
    (as the controller fails one that waited past request_timeout_s)."""

    def __init__(self, model, timeout_s: float):
        super().__init__(model)
        now = time.monotonic()
        self.metrics.drain = _meter(now, 2.0, 20.0)
        self.state = SimpleNamespace(queues={MODEL: _queue(60, now - 25.0)})
        self.cc = SimpleNamespace(request_timeout_s=timeout_s)

    async def submit(self, model, ids, sampling, siblings=()):
        r = await super().submit(model, ids, sampling, siblings)
        r.fail(TimeoutError_(f"no instance of {model!r} could take the request within 1 s", timeout_s=1.0))
        return r


def _ask(ctl, stream: bool):
    async def main():
        async with TestClient(TestServer(Api(ctl).app()), timeout=aiohttp.ClientTimeout(total=30)) as c:
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 4,
                                                      "stream": stream})
            return r.status, r.headers.get("Retry-After"), await r.json()

    return asyncio.run(main())


@pytest.mark.parametrize("stream", [False, True])
def test_an_http_request_that_would_wait_too_long_is_a_503_with_retry_after(model, stream):
    ctl = _Queued(model, timeout_s=10.0)
    status, retry_after, body = _ask(ctl, stream)
    # Retry-After: the 20 s the 30 s queue needs to drain to the 10 s line (a fixed 1 before the live review)
    assert (status, retry_after, body["error"]["code"]) == (503, "20", "service_unavailable"), body
    assert "would wait about 30 s" in body["error"]["message"], body
    assert ctl.submitted == []  # refused before it was queued
    assert ctl.metrics.rejected.get(status=503, route="/v1/completions") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_504_carries_retry_after(model, stream):
    ctl = _Queued(model, timeout_s=60.0)  # 30 s of expected wait is admitted; the request then times out
    status, retry_after, body = _ask(ctl, stream)
    assert (status, retry_after, body["error"]["code"]) == (504, "1", "timeout"), body
    assert ctl.metrics.rejected.get(status=504, route="/v1/completions") == 1


def test_a_start_noted_out_of_order_is_placed_in_order():
    # found by mutation testing: only in-order starts were fed, so the placing of a stray earlier one (the list
    # the rate bisects must stay sorted) was not pinned
    m = DrainMeter()
    for i in reversed(range(MIN_STARTS)):
        m.started(MODEL, 100.0 + i)
    assert m.rate_per_s(MODEL, 0.0, 120.0) == (1.0, MIN_STARTS, MIN_STARTS - 1.0)


def test_a_wait_just_past_the_line_asks_a_retry_after_of_one_second():
    # found by mutation testing: the smallest Retry-After was not pinned (every refusal tried was 2 s or more past)
    now = time.monotonic()
    meter = _meter(now, 2.0, 20.0)  # a mature measure: the line is the timeout itself
    with pytest.raises(OverloadedError) as e:
        queue_wait.check(_controller(_queue(60, now - 25.0), meter, 29.5), MODEL)  # 30 s of wait, 0.5 s past
    assert e.value.retry_after_s == 1
