"""Four inconsistencies of the HTTP API's refusals, from the API polish review: a max_tokens (or a chat's
max_completion_tokens) alone past the model's context was a 400 without the code ``context_length_exceeded`` that
min_tokens past it had; seeds above 2**63 - 1, which vLLM refuses (torch.long's range), were taken; /health's 503
while the server drains had no ``Retry-After``, which every other 503 has; and min_tokens above the limit was told to
raise ``max_tokens`` on a chat that named max_completion_tokens, or that set no limit at all. Served by aiohttp on a
real socket with the demo model's real tokenizer; the controller behind it is a stand-in whose requests end at once."""

import asyncio

import aiohttp
import torch
from aiohttp.test_utils import TestClient, TestServer

from warmserve import protocol as P
from warmserve.controller.api import RETRY_AFTER_S, Api
from warmserve.controller.errors import NoWorkersError, OverloadedError
from warmserve.engine.sampler import draw_seed, sample

from test_http_api_log_and_limits import MODEL, Ctl

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": MODEL, "prompt": "hi"}
SEED_MIN, SEED_MAX = -(2 ** 63), 2 ** 63 - 1


def _ask(ctl, asks, get=()):
    """(status, headers, body) of each POST in ``asks`` ((path, body) pairs), then of each GET of ``get``."""
    async def main():
        async with TestClient(TestServer(Api(ctl).app()), timeout=aiohttp.ClientTimeout(total=60)) as c:
            out = []
            for path, body in asks:
                r = await c.post(path, json=body)
                out.append((r.status, r.headers, await r.json()))
            for path in get:
                r = await c.get(path)
                out.append((r.status, r.headers, await r.json()))
            return out

    return asyncio.run(main())


def test_max_tokens_alone_past_the_context_has_the_code_min_tokens_has(model):
    ctx = model.max_context
    asks = [("/v1/completions", {**COMPLETION, "max_tokens": ctx}, "max_tokens", ctx),
            ("/v1/completions", {**COMPLETION, "max_tokens": ctx + 5}, "max_tokens", ctx + 5),
            ("/v1/chat/completions", {**CHAT, "max_tokens": ctx + 1}, "max_tokens", ctx + 1),
            ("/v1/chat/completions", {**CHAT, "max_completion_tokens": ctx}, "max_completion_tokens", ctx),
            # the one that had the code: a chat with no limit, whose min_tokens alone is past the context
            ("/v1/chat/completions", {**CHAT, "min_tokens": ctx}, "min_tokens", ctx)]
    ctl = Ctl(model)
    got = _ask(ctl, [(path, body) for path, body, _, _ in asks])
    for (path, _, param, asked), (status, _, body) in zip(asks, got):
        err = body["error"]
        assert (status, err["code"], err["param"], err["type"]) == (
            400, "context_length_exceeded", param, "invalid_request_error"), (path, param, err)
        # the numbers and the way out: what was asked, the context, what to ask for instead
        assert f"{param} {asked} " in err["message"] and f"context of {ctx} tokens" in err["message"], err
        assert f"ask for fewer than {ctx}" in err["message"], err
    assert not ctl.submitted


def test_a_seed_outside_torch_long_is_refused_and_its_edges_reach_the_sampler(model):
    outside = (2 ** 63, 2 ** 64 - 1, SEED_MIN - 1)
    asks = [(path, {**base, "seed": seed, "max_tokens": 2}) for seed in outside
            for path, base in (("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT))]
    # the edges are taken, on both routes, and with n = 2 the second choice's seed + 1 past the top one
    asks += [("/v1/completions", {**COMPLETION, "seed": SEED_MIN, "max_tokens": 2}),
             ("/v1/chat/completions", {**CHAT, "seed": SEED_MAX, "max_tokens": 2}),
             ("/v1/completions", {**COMPLETION, "seed": SEED_MAX, "max_tokens": 2, "n": 2})]
    ctl = Ctl(model)
    got = _ask(ctl, asks)
    for (path, body), (status, _, answer) in zip(asks[:len(outside) * 2], got):
        err = answer.get("error") or {}
        assert (status, err["param"], err["code"]) == (400, "seed", None), (path, body["seed"], err)
        assert f"[{SEED_MIN}, {SEED_MAX}]" in err["message"] and str(body["seed"]) in err["message"], err
    assert [s for s, _, _ in got[len(outside) * 2:]] == [200] * 3
    seeds = [r.sampling.seed for r in ctl.submitted]
    assert seeds == [SEED_MIN, SEED_MAX, SEED_MAX, SEED_MAX + 1]
    # each seeds a draw as the engine does (Engine._sample), after a trip over the wire to the worker
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    for r in ctl.submitted:
        msg = P.decode_request(P.encode(P.Generate(id=1, model=MODEL, prompt_ids=[1], sampling=r.sampling)))
        assert msg.sampling.seed == r.sampling.seed
        gen = torch.Generator()
        draws = []
        for _ in range(2):  # the same seed, the same token
            gen.manual_seed(draw_seed(msg.sampling.seed, 0))
            draws.append(sample(logits, [msg.sampling], [gen]))
        assert draws[0] == draws[1] and 0 <= draws[0][0] < 50


class Draining(Ctl):
    """The controller while the server shuts down (``Controller.close``): /health says so, new requests are
    refused as ``Controller.submit_nowait`` refuses them."""

    def health(self):
        return {"ok": False, "workers": 1, "closing": True}

    async def submit(self, model, ids, sampling, siblings=()):
        raise OverloadedError("the server is shutting down and takes no new requests")


class NoWorker(Ctl):
    def health(self):
        return {"ok": False, "workers": 0, "closing": False}

    async def submit(self, model, ids, sampling, siblings=()):
        raise NoWorkersError("no live worker can serve requests right now: retry once GET /health is 200")


def test_every_503_of_a_drain_or_of_no_worker_says_when_to_retry(model):
    for ctl in (Draining(model), NoWorker(model)):
        got = _ask(ctl, [("/v1/completions", {**COMPLETION, "max_tokens": 2}),
                         ("/v1/chat/completions", {**CHAT, "max_tokens": 2, "stream": True})], get=["/health"])
        for status, headers, _ in got:
            assert status == 503 and headers.get("Retry-After") == str(RETRY_AFTER_S), (type(ctl), status, headers)
        assert got[-1][2]["closing"] is isinstance(ctl, Draining)


def test_min_tokens_above_the_limit_names_the_limit_the_client_set(model):
    asks = [("/v1/chat/completions", {**CHAT, "max_completion_tokens": 3, "min_tokens": 5}, "max_completion_tokens"),
            ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 3, "max_tokens": 9, "min_tokens": 5},
             "max_completion_tokens"),
            ("/v1/chat/completions", {**CHAT, "max_tokens": 3, "min_tokens": 5}, "max_tokens"),
            ("/v1/completions", {**COMPLETION, "max_tokens": 3, "min_tokens": 5}, "max_tokens")]
    below = [("/v1/chat/completions", {**CHAT, "min_tokens": -1}),  # no limit set: none to raise
             ("/v1/completions", {**COMPLETION, "max_tokens": None, "min_tokens": -1}),
             ("/v1/completions", {**COMPLETION, "min_tokens": -1})]
    ctl = Ctl(model)
    got = _ask(ctl, [(path, body) for path, body, _ in asks] + below)
    for (path, body, limit), (status, _, answer) in zip(asks, got):
        err = answer["error"]
        assert (status, err["param"]) == (400, "min_tokens"), (path, err)
        assert err["message"] == (f"min_tokens must be in [0, {limit}] = [0, 3], got 5: lower min_tokens or raise "
                                  f"{limit}"), (path, body)
    for (path, body), (status, _, answer) in zip(below, got[len(asks):]):
        err = answer["error"]
        assert (status, err["param"]) == (400, "min_tokens"), (path, err)
        assert "at least 0, got -1" in err["message"] and "max_tokens" not in err["message"], (path, body, err)
    assert not ctl.submitted
