"""A valid prompt at the context limit on `warmserve serve`: its prefill steps each last longer than the
controller's worker timeout, yet the worker stays alive (its heartbeats do not wait for engine steps), the long
request is answered, and short requests sent meanwhile are answered too.

Before the worker's link thread, the worker sent heartbeats from the loop that runs engine steps: the controller
declared it lost during the first 2,048-token prefill chunk and every request failed."""

import asyncio
import json
import time
import urllib.request

import pytest

import serving

aiohttp = pytest.importorskip("aiohttp")

MODEL = "qwen2-30m"  # the smallest demo model with a 4,096-token context
CONTEXT = 4096
#: Few: what is checked happens in the prefill; each decode step over the 4,096-token context added ~40 ms.
MAX_TOKENS = 2
# A prefill chunk of 2,048 tokens of this model takes about 1.5 s on one thread of the 2-core test VM: well over
# WORKER_TIMEOUT_S, while heartbeats come every HEARTBEAT_S.
HEARTBEAT_S = 0.15
WORKER_TIMEOUT_S = 0.6
#: The bound worker's prompt: one whole prefill chunk (the engine's step budget), the step the worker was silent for.
#: The context limit itself is the test above's; a second chunk here (its attention over the first, then decode
#: steps over 4,096 tokens) added 7-10 s on the loaded 2-core VM and nothing the client's timeout could see.
BOUND_PROMPT = 2048


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long-prompt")
    proc, url = serving.start(tmp, models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=536870912,
                              log_level="WARNING", start_timeout_s=120, heartbeat_interval_s=HEARTBEAT_S,
                              worker_timeout_s=WORKER_TIMEOUT_S, drain_timeout_s=5, restart_backoff_s=None)
    yield url, tmp / "serve.log"
    serving.stop(proc, timeout_s=30)


async def _stream(session, url: str, prompt, max_tokens: int) -> dict:
    """One streaming completion: status, text, finish reason, prompt tokens and time to the first text."""
    t0 = time.monotonic()
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    out = {"status": None, "text": "", "finish": None, "prompt_tokens": None, "first_s": None, "error": None}
    async with session.post(url + "/v1/completions", json=body) as r:
        out["status"] = r.status
        if r.status != 200:
            out["error"] = await r.text()
            return out
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                out["error"] = ev["error"]
                continue
            if ev.get("usage"):
                out["prompt_tokens"] = ev["usage"]["prompt_tokens"]
            for ch in ev.get("choices", []):
                if out["first_s"] is None:
                    out["first_s"] = time.monotonic() - t0
                out["text"] += ch.get("text") or ""
                out["finish"] = ch.get("finish_reason") or out["finish"]
    return out


def _counter(url: str, name: str) -> float:
    """A counter's value from /metrics, read with prometheus_client's own parser (the family must exist)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert name in families and families[name].type == "counter", f"no counter {name} in /metrics"
    return sum(s.value for s in families[name].samples if s.name == name + "_total")


def test_prompt_at_the_context_limit_keeps_the_worker_alive(server):
    url, log = server
    long_prompt = [10 + i % 200 for i in range(CONTEXT - MAX_TOKENS)]

    async def run():
        timeout = aiohttp.ClientTimeout(total=50)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            warm = await _stream(s, url, "warm up", 2)  # activates the model before the timed part
            assert warm["status"] == 200 and warm["error"] is None, warm
            t0 = time.monotonic()
            long_req = asyncio.ensure_future(_stream(s, url, long_prompt, MAX_TOKENS))
            await asyncio.sleep(0.3)  # the short ones arrive while the long prompt is being prefilled
            shorts = await asyncio.gather(*(_stream(s, url, f"short request {i}", 4) for i in range(4)))
            return await long_req, shorts, time.monotonic() - t0

    long_out, shorts, took_s = asyncio.run(run())
    assert long_out["status"] == 200 and long_out["error"] is None, long_out
    assert long_out["prompt_tokens"] == CONTEXT - MAX_TOKENS and long_out["finish"] in ("length", "stop"), long_out
    # The test means something only if the prefill took longer than the controller's patience.
    assert long_out["first_s"] > WORKER_TIMEOUT_S, f"prefill took {long_out['first_s']:.2f} s: raise the prompt"
    for out in shorts:
        assert out["status"] == 200 and out["error"] is None and out["text"], out
    assert took_s < 45
    assert _counter(url, "warmserve_workers_lost") == 0, log.read_text()[-3000:]
    with urllib.request.urlopen(url + "/stats", timeout=10) as r:
        workers = json.loads(r.read())["workers"]
    assert workers and all(w["alive"] for w in workers), workers
    assert " lost" not in log.read_text(), log.read_text()[-3000:]


def test_a_bound_worker_keeps_its_clients_informed_during_a_long_prefill(tmp_path):
    """A long prefill on a worker reached directly (`--bind`): a client that gives up after WORKER_TIMEOUT_S of
    silence gets the whole answer (before, the worker was silent for a whole prefill step and the client raised
    WorkerLostError)."""
    from warmserve import protocol as P
    from warmserve.engine.demo import write_demo_models
    from warmserve.worker import WorkerClient, spawn_local_worker

    path = write_demo_models(None, [MODEL])[MODEL]
    proc, endpoint = spawn_local_worker("cpu", memory_gib=0.5, threads=1, heartbeat_interval_s=HEARTBEAT_S,
                                        log_path=str(tmp_path / "worker.log"))
    try:
        with WorkerClient(endpoint, heartbeat_interval_s=HEARTBEAT_S, worker_timeout_s=WORKER_TIMEOUT_S) as c:
            c.prewarm(path)
            c.activate(MODEL)
            prompt = [10 + i % 200 for i in range(BOUND_PROMPT)]
            t0 = time.monotonic()
            stream = c.generate(MODEL, prompt, P.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True),
                                timeout_s=60)
            first = next(iter(stream))
            first_s = time.monotonic() - t0
            ids, last = stream.collect()
            assert first_s > WORKER_TIMEOUT_S, f"prefill took {first_s:.2f} s: raise the prompt"
            assert len(first.token_ids) + len(ids) == MAX_TOKENS and last.finish_reason == "length"
            assert last.num_prompt_tokens == BOUND_PROMPT
            c.shutdown(timeout_s=10)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
