"""One model flooded past its queue cap on a real `warmserve serve` (found in the overload review): its refusals are
prompt 503s with Retry-After and the numbers, the other model is served beside it, the server serves the flooded
model again once the flood ends, and the refusals do not flood the log with a WARNING each (before: one per
refused request, 22,937 in about 200 s of a live flood at max_queue 64)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.integration import serving

FLOODED, NEIGHBOUR = serving.MODELS
FLOOD_S = 3.0

# instance_capacity 2 and max_queue 2: four requests of the flooded model are taken, the rest refused at once.
server = serving.server_fixture("overload_review", cpu_workers=1, policy={"instance_capacity": 2}, max_queue=2)


async def _flood(url: str) -> tuple[list[tuple], list[tuple]]:
    """Clients hammering FLOODED for FLOOD_S, retrying refusals after 50 ms (not the Retry-After they are given),
    while a probe asks NEIGHBOUR every 0.3 s; (flood answers, probe answers) as (status, Retry-After, body)."""
    end = time.monotonic() + FLOOD_S
    flood, probes = [], []

    async def ask(s, model, max_tokens, out):
        body = {"model": model, "prompt": "hello world", "max_tokens": max_tokens}
        async with s.post(url + "/v1/completions", json=body) as r:
            out.append((r.status, r.headers.get("Retry-After"), await r.json()))
            return r.status

    async def client(s):
        while time.monotonic() < end:
            if await ask(s, FLOODED, 48, flood) != 200:
                await asyncio.sleep(0.05)

    async def probe(s):
        while time.monotonic() < end:
            await ask(s, NEIGHBOUR, 4, probes)
            await asyncio.sleep(0.3)

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:
        await asyncio.gather(probe(s), *(client(s) for _ in range(24)))
    return flood, probes


def test_a_flood_of_one_model_is_refused_promptly_isolated_and_logged_in_one_line(server):
    url, _, tmp = server
    flood, probes = asyncio.run(_flood(url))
    refused = [a for a in flood if a[0] == 503]
    assert len(refused) >= 50 and {a[0] for a in flood} <= {200, 503}, sorted({a[0] for a in flood})
    assert all(a[1] == "1" and a[2]["error"]["code"] == "service_unavailable"
               and "(limit 2)" in a[2]["error"]["message"] and "max_queue" in a[2]["error"]["message"]
               for a in refused), refused[:2]
    assert probes and all(a[0] == 200 for a in probes), [a for a in probes if a[0] != 200][:2]
    # the flood is over: every client request ended, nothing is left queued, the flooded model serves again
    assert serving.get_json(url + "/stats")[1]["queued"] == {FLOODED: 0, NEIGHBOUR: 0}
    status, _ = serving.post_json(url + "/v1/completions", {"model": FLOODED, "prompt": "hi", "max_tokens": 4})
    assert status == 200
    log = (tmp / "serve.log").read_text()
    assert log.count(f"model={FLOODED} status=503") == len(refused)  # the access log keeps every one
    warned = [ln for ln in log.splitlines() if "WARNING" in ln and "answered 503" in ln]
    assert len(warned) == 1 and "answer(s) of status 503" in warned[0], (len(warned), warned[:3])
