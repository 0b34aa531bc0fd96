"""warmserve_request_queue_seconds and the access log's queue_ms: the time a request waited in the controller before
its first send to an instance, the part of a high TTFT that was a wait for an instance to start. A real controller
on real ZeroMQ sockets, behind the real HTTP layer, with a scripted worker that holds its first Activate (a cold
start the test ends when it chooses) or refuses a request's first Generate (a re-route)."""

import asyncio
import logging
import time

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from warmserve import protocol as P
from warmserve.controller.api import Api
from warmserve.errors import ModelStateError

from controller_harness import MODEL, Peer, make_controller, run, until

HOLD_S = 0.3
BODY = {"model": MODEL, "prompt": "x", "max_tokens": 3}


def _scrape(c) -> dict[str, float]:
    """warmserve_request_queue_seconds of MODEL as a scrape shows it: each bucket's cumulative count by its le,
    and "sum" and "count"."""
    out = {}
    for f in text_string_to_metric_families(c.metrics.registry.render()):
        for s in f.samples:
            if s.name.startswith("warmserve_request_queue_seconds_") and not s.name.endswith("_created") \
                    and s.labels.get("model") == MODEL:
                out[s.labels.get("le", s.name.rsplit("_", 1)[1])] = s.value
    return out


def _access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "warmserve.access"]


def _field(line: str, name: str) -> str:
    return line.split(f" {name}=")[1].split(" ")[0]


async def _release_first_activate(c, peer: Peer) -> None:
    """Once the peer got an Activate and the request waits in the controller's queue for it, hold it HOLD_S more,
    then answer it as a worker would."""
    assert await until(lambda: any(isinstance(m, P.Activate) for m in peer.got) and c.state.queued(MODEL) == 1, 5)
    await asyncio.sleep(HOLD_S)
    act = next(m for m in peer.got if isinstance(m, P.Activate))
    peer.instances[act.name] = (act.shared, act.group_id)
    peer.hold_activate = False
    await peer.send(P.Activated(id=act.id, name=act.name, kv_blocks=8, activate_s=HOLD_S, copied_bytes=0))


def test_a_request_held_behind_a_cold_start_is_observed_in_its_bucket_and_logged(model, caplog):
    """Before: no such series (the scrape had no bucket), and the access line had no queue_ms."""

    async def main():
        c = make_controller(model)
        peer = Peer(await c.start())
        peer.hold_activate = True
        await c.wait_for_workers(1, 5)
        at_zero = _scrape(c)
        async with TestClient(TestServer(Api(c).app())) as http:
            posted_s = time.monotonic()
            post = asyncio.ensure_future(http.post("/v1/completions", json=BODY))
            await _release_first_activate(c, peer)
            r = await post
            assert r.status == 200, await r.text()
            sent_by_s = time.monotonic()
            await http.get("/v1/models")  # a request that never reached the queue: queue_ms=-
        await c.close(drain=False)
        peer.close()
        return at_zero, _scrape(c), sent_by_s - posted_s

    with caplog.at_level(logging.INFO, logger="warmserve.access"):
        at_zero, after, upper_s = run(main())
    assert at_zero and set(at_zero.values()) == {0.0}, at_zero  # exported at 0 before the first request
    assert after.pop("count") == 1 and after["+Inf"] == 1, after
    assert after["0.25"] == 0, after  # it waited HOLD_S at least, behind the held Activate
    queue_s = after.pop("sum")
    assert HOLD_S <= queue_s <= upper_s, (queue_s, upper_s)
    le = min(float(k) for k, v in after.items() if v == 1)  # the bucket it lands in: the first holding it
    assert le >= queue_s and max([float(k) for k in after if float(k) < le] + [0.0]) < queue_s, (le, queue_s)
    completion, models = _access_lines(caplog)
    assert abs(float(_field(completion, "queue_ms")) - queue_s * 1e3) <= 0.05, (completion, queue_s)
    assert float(_field(completion, "queue_ms")) <= float(_field(completion, "ttft_ms")), completion
    assert _field(models, "queue_ms") == "-", models


class RefusesFirstGenerate(Peer):
    """A worker that answers the first Generate it gets with "not running here" (the controller's routing raced a
    stop): that request is re-routed (its instance stopped, started again) and sent a second time."""

    def __init__(self, *a, **k):
        self.generate_s: list[float] = []  # when each Generate got here
        super().__init__(*a, **k)

    async def handle(self, msg):
        if isinstance(msg, P.Generate):
            self.generate_s.append(time.monotonic())
        if isinstance(msg, P.Generate) and len(self.generate_s) == 1:
            await asyncio.sleep(HOLD_S)  # so that its second send comes well after its first
            await self.send(P.Error.of(msg.id, ModelStateError(f"model {msg.model!r} is not running")))
            return
        await super().handle(msg)


def test_a_rerouted_request_is_observed_once_with_its_first_wait(model, caplog):
    """Observed at its first send only (as vLLM observes its queue time once per request), so the time it spent on
    its first instance and queued again is not queue time. Before: no such series, no queue_ms."""

    async def main():
        c = make_controller(model)
        peer = RefusesFirstGenerate(await c.start())
        await c.wait_for_workers(1, 5)
        async with TestClient(TestServer(Api(c).app())) as http:
            posted_s = time.monotonic()
            r = await http.post("/v1/completions", json=BODY)
            assert r.status == 200, await r.text()
        await c.close(drain=False)
        peer.close()
        return c, [t - posted_s for t in peer.generate_s]

    with caplog.at_level(logging.INFO, logger="warmserve.access"):
        c, generates_s = run(main())
    assert len(generates_s) == 2 and c.metrics.rerouted.get(model=MODEL) == 1
    assert generates_s[1] - generates_s[0] >= HOLD_S, generates_s
    got = _scrape(c)
    assert got["count"] == 1 and c.metrics.queue_time.count(model=MODEL) == 1, got
    queue_s = got["sum"]
    assert queue_s <= generates_s[0], (queue_s, generates_s)  # its first wait, not up to its second send
    (line,) = _access_lines(caplog)
    assert abs(float(_field(line, "queue_ms")) - queue_s * 1e3) <= 0.05, (line, queue_s)


class SlowGenerate(Peer):
    """A worker whose every Generate takes HOLD_S before its tokens."""

    async def handle(self, msg):
        if isinstance(msg, P.Generate):
            await asyncio.sleep(HOLD_S)
        await super().handle(msg)


def test_an_n2_request_logs_the_longest_wait_of_its_choices(model, caplog):
    """One request per instance (route_cap_per_instance 1) and one instance: the second choice waits for the first
    to end. Each choice is observed; the access line shows the second's wait, the longest. Before: no queue_ms."""

    async def main():
        c = make_controller(model, policy_options=(("route_cap_per_instance", 1),))
        peer = SlowGenerate(await c.start())
        await c.wait_for_workers(1, 5)
        async with TestClient(TestServer(Api(c).app())) as http:
            r = await http.post("/v1/completions", json={**BODY, "n": 2})
            assert r.status == 200, await r.text()
        await c.close(drain=False)
        peer.close()
        return c, sum(isinstance(m, P.Generate) for m in peer.got)

    with caplog.at_level(logging.INFO, logger="warmserve.access"):
        c, sends = run(main())
    got = _scrape(c)
    assert sends == 2 and got["count"] == 2, (sends, got)
    assert got["0.25"] <= 1, got  # the second choice waited HOLD_S at least, for the first
    (line,) = _access_lines(caplog)
    longest_s = float(_field(line, "queue_ms")) / 1e3
    other_s = got["sum"] - longest_s  # the other choice's wait, as observed
    assert HOLD_S <= longest_s and -0.0001 <= other_s <= longest_s, (line, got)
