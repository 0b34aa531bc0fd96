"""/metrics through prometheus_client: what the reference parser reads back, outcomes, rejections by status."""

import asyncio

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from warmserve.controller.api import Api
from warmserve.controller.errors import OverloadedError, TooManyRequestsError
from warmserve.controller.frontend import TextGeneration
from warmserve.controller.metrics import ControllerMetrics
from warmserve.controller.requests import Req
from warmserve.controller.views import kv_usage
from warmserve.errors import UnknownModelError
from warmserve.protocol import SamplingParams


def families(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = fam
    return out


def value(text: str, name: str, **labels) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == str(v) for k, v in labels.items()):
                return s.value
    return 0.0


def test_every_sample_parses_typed_with_the_reference_parser():
    m = ControllerMetrics()
    m.ttft.observe(0.2, model="m")
    m.e2e.observe(0.3, model="m", outcome="stop")
    m.requests.inc(model="m", outcome="stop")
    m.rejected_request(429, "/v1/completions")
    m.prompt_tokens.inc(5, model="m")
    m.tokens.inc(3, model="m")
    m.workers_lost.inc()
    m.kv_usage.set(0.25, worker="w0", model="m")
    m.worker_kv_usage.set(0.25, worker="w0")
    m.pages.set(7, worker="w0", role="kv")
    text = m.registry.render()
    fams = families(text)
    assert fams, text
    for fam in fams.values():
        assert fam.type in ("counter", "gauge", "histogram"), (fam.name, fam.type)
        for s in fam.samples:
            assert s.name.startswith(fam.name), (s.name, fam.name)
    assert fams["warmserve_requests"].type == "counter"
    assert fams["warmserve_request_seconds"].type == "histogram"
    assert value(text, "warmserve_requests_total", model="m", outcome="stop") == 1
    assert value(text, "warmserve_rejected_requests_total", status=429, route="/v1/completions") == 1
    assert value(text, "warmserve_prompt_tokens_total", model="m") == 5
    assert value(text, "warmserve_generation_tokens_total", model="m") == 3
    assert value(text, "warmserve_kv_cache_usage_ratio", worker="w0", model="m") == 0.25
    assert value(text, "warmserve_request_seconds_count", model="m", outcome="stop") == 1


def test_wrong_labels_are_refused():
    m = ControllerMetrics()
    for call in (lambda: m.ttft.observe(1.0), lambda: m.requests.inc(model="m"), lambda: m.queue.set(1, x="y")):
        try:
            call()
        except ValueError:
            continue
        raise AssertionError("a metric took the wrong labels")


def _req(rid=1) -> Req:
    r = Req(rid, "m", [1, 2, 3], SamplingParams(), timeout_s=60)
    return r


def test_each_outcome_moves_its_counter_and_latency_histogram():
    m = ControllerMetrics()
    outcomes = ("stop", "length", "abort", "error", "timeout", "worker_lost")
    for i, outcome in enumerate(outcomes):
        r = _req(i)
        r.push([5, 6])
        m.tokens_pushed(r, 0, None)  # what the controller does at each Tokens: the counts before this push
        m.request_done(r, outcome)
    for outcome in outcomes:
        assert m.requests.get(model="m", outcome=outcome) == 1
        assert m.e2e.count(model="m", outcome=outcome) == 1
    assert m.tokens.get(model="m") == 2 * len(outcomes)
    # TPOT of the requests that finished (stop, length, abort) only: test_metrics_fix_tpot.py
    assert m.ttft.count(model="m") == len(outcomes) and m.tpot.count(model="m") == 3


def test_a_request_ended_by_a_stop_string_counts_as_stop_not_abort():
    """The text stream aborts the request at a stop string; its worker answers finish_reason "abort"."""
    m = ControllerMetrics()

    async def go():
        r = _req()
        r._abort_cb = lambda req: None
        gen = TextGeneration(r, lambda ids: "".join(chr(96 + t) for t in ids), stop=("c",))
        r.push([1, 2, 3, 4])
        text = await gen.collect()
        assert text == "ab" and gen.finish_reason == "stop"
        m.request_done(r, "abort")  # what the worker's final Tokens says
        r2 = _req(2)
        r2._abort_cb = lambda req: None
        r2.abort()  # a client that went away
        m.request_done(r2, "abort")

    asyncio.run(go())
    assert m.requests.get(model="m", outcome="stop") == 1
    assert m.requests.get(model="m", outcome="abort") == 1


def test_kv_usage_is_a_fraction():
    assert kv_usage(3, 12) == 0.25 and kv_usage(0, 0) == 0.0


class _Tok:
    vocab_size = 100

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 100 for c in text]

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


class _Model:
    name = "m"
    max_context = 64
    max_token_chars = 4
    tokenizer = _Tok()
    sampling_defaults: dict = {}  # no generation_config.json
    default_max_tokens = None


class _Ctl:
    """The two-method side of a controller the HTTP layer needs for these statuses (the real controller behind
    the real server is tests/integration/test_openai_params.py's)."""

    def __init__(self):
        self.metrics = ControllerMetrics()

    def model_names(self):
        return ["m"]

    def model(self, name):
        if name == "busy":
            raise OverloadedError("the server is shutting down and takes no new requests")
        if name != "m":
            raise UnknownModelError(f"the model {name!r} does not exist", param="model")
        return _Model()

    def stats(self):
        raise RuntimeError("a bug in stats")

    async def submit(self, model, ids, sampling, siblings=()):
        raise TooManyRequestsError("the queue is full")


def test_rejections_are_counted_by_status():
    ctl = _Ctl()

    async def go():
        api = Api(ctl, api_key="k")
        async with TestClient(TestServer(api.app())) as c:
            auth = {"Authorization": "bearer k"}  # the scheme in any case
            ok = lambda m: {"model": m, "prompt": "hi"}  # noqa: E731
            cases = [
                (400, c.post("/v1/completions", data=b"{", headers=auth)),
                (401, c.post("/v1/completions", json=ok("m"))),
                (404, c.post("/v1/completions", json=ok("nope"), headers=auth)),
                (405, c.get("/v1/completions", headers=auth)),
                (413, c.post("/v1/completions", data=b" " * (17 << 20), headers=auth)),
                (429, c.post("/v1/completions", json=ok("m"), headers=auth)),
                (500, c.get("/stats", headers=auth)),
                (503, c.post("/v1/completions", json=ok("busy"), headers=auth)),
            ]
            for status, call in cases:
                r = await call
                assert r.status == status, (status, await r.text())
            r = await c.get("/metrics")
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            return await r.text()

    text = asyncio.run(go())
    for status in (400, 401, 404, 405, 413, 429, 500, 503):
        total = sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                    if s.name == "warmserve_rejected_requests_total" and s.labels["status"] == str(status))
        assert total == 1, (status, text)
