"""`warmserve serve` as a subprocess on CPU workers, driven by the official `openai` client."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import serving

openai = pytest.importorskip("openai")


server = serving.server_fixture("serve", stop_timeout_s=30, log_level="WARNING", start_timeout_s=120,
                                restart_backoff_s=None)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=60)


def post_raw(url: str, body: bytes, headers=None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_and_health(server, client):
    """Found in review: the model cards had no max_model_len (vLLM's), which clients size prompts by."""
    listed = client.models.list().data
    assert sorted(m.id for m in listed) == sorted(serving.MODELS)
    paths = serving.demo_paths()
    for m in listed:
        with open(os.path.join(paths[m.id], "config.json")) as f:
            want = json.load(f)["max_position_embeddings"]
        assert m.max_model_len == want and client.models.retrieve(m.id).max_model_len == want
    with urllib.request.urlopen(server[0] + "/health", timeout=10) as r:
        h = json.loads(r.read())
    assert h["ok"] and h["workers"] == 2


@pytest.mark.parametrize("model", serving.MODELS)
def test_chat_and_completions_both_ways(client, model):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == model
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    chunks = list(client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert text == r.choices[0].message.content  # greedy: streamed and whole answers agree

    c = client.completions.create(model=model, prompt="The quick brown fox", max_tokens=12, temperature=0.8,
                                  top_p=0.9, seed=7)
    assert c.object == "text_completion" and c.usage.completion_tokens >= 1
    again = client.completions.create(model=model, prompt="The quick brown fox", max_tokens=12, temperature=0.8,
                                      top_p=0.9, seed=7)
    assert again.choices[0].text == c.choices[0].text  # a seed makes sampling reproducible
    streamed = "".join(x.choices[0].text for x in client.completions.create(
        model=model, prompt="The quick brown fox", max_tokens=12, temperature=0.8, top_p=0.9, seed=7, stream=True))
    assert streamed == c.choices[0].text


def test_stop_string_and_max_tokens(client):
    base = client.completions.create(model=serving.MODELS[0], prompt="a b c", max_tokens=16, temperature=0)
    text = base.choices[0].text
    assert base.choices[0].finish_reason == "length" or base.usage.completion_tokens < 16
    if len(text.strip()) >= 2:
        stop = text.strip()[1:3] if len(text.strip()) >= 3 else text.strip()[-1]
        cut = client.completions.create(model=serving.MODELS[0], prompt="a b c", max_tokens=16, temperature=0,
                                        stop=[stop])
        assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
        assert text.startswith(cut.choices[0].text)


def test_unknown_model_is_404(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    err = e.value.body
    assert err["code"] == "model_not_found" and "nope" in err["message"] and err["type"] == "invalid_request_error"
    status, body = post_raw(server[0] + "/v1/completions", json.dumps({"model": "nope", "prompt": "x"}).encode())
    assert status == 404 and set(body["error"]) == {"message", "type", "param", "code"}


def test_malformed_json_is_400(server):
    status, body = post_raw(server[0] + "/v1/chat/completions", b'{"model": "llama-20m", "messages": [')
    assert status == 400 and "JSON" in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    status, body = post_raw(server[0] + "/v1/completions", json.dumps({"model": serving.MODELS[0], "prompt": "x",
                                                                        "max_tokens": "many"}).encode())
    assert status == 400 and body["error"]["param"] == "max_tokens"


def test_prompt_over_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=serving.MODELS[0], prompt="hello " * 5000, max_tokens=4)
    assert "context" in e.value.body["message"] and "tokens" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=serving.MODELS[1], messages=[{"role": "user", "content": "word " * 9000}])


def test_32_concurrent_clients_all_answered(server):
    async def main():
        c = openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=120)

        async def one(i):
            model = serving.MODELS[i % 2]
            if i % 4 < 2:
                r = await c.chat.completions.create(model=model, max_tokens=8, seed=i,
                                                    messages=[{"role": "user", "content": f"request {i}"}])
                return r.choices[0].finish_reason, r.usage.completion_tokens
            s = await c.completions.create(model=model, prompt=f"request {i}", max_tokens=8, seed=i, stream=True)
            n, finish = 0, None
            async for ch in s:
                n += 1
                finish = ch.choices[0].finish_reason or finish
            return finish, n

        try:
            return await asyncio.gather(*(one(i) for i in range(32)))
        finally:
            await c.close()

    t0 = time.monotonic()
    results = asyncio.run(main())
    assert len(results) == 32 and all(f in ("stop", "length") and n >= 1 for f, n in results)
    assert time.monotonic() - t0 < 90


def test_metrics_after_traffic(server, client):
    client.completions.create(model=serving.MODELS[0], prompt="count me", max_tokens=3, temperature=0)
    with urllib.request.urlopen(server[0] + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for series in ("warmserve_ttft_seconds_bucket", "warmserve_tpot_seconds_count", "warmserve_queue_length",
                   "warmserve_instances", "warmserve_prewarm_misses_total", "warmserve_worker_pages"):
        assert series in text, series
    assert 'warmserve_requests_total{model="llama-20m",outcome="stop"}' in text or \
        'warmserve_requests_total{model="llama-20m",outcome="length"}' in text
    assert 'role="weights"' in text and 'role="free"' in text
    with urllib.request.urlopen(server[0] + "/stats", timeout=10) as r:
        stats = json.loads(r.read())
    assert len(stats["workers"]) == 2 and all(w["alive"] for w in stats["workers"])
    assert {i["model"] for i in stats["instances"]} <= set(serving.MODELS)


def test_remote_worker_joins_with_controller_flag(tmp_path):
    """A worker started on its own with --controller joins a cluster that waits for one remote worker."""
    import socket

    from warmserve import Cluster

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"tcp://127.0.0.1:{port}"
    worker = subprocess.Popen([sys.executable, "-m", "warmserve", "worker", "--controller", addr, "--device", "cpu",
                               "--memory-gib", "0.5", "--threads", "1", "--worker-id", "otherhost-1-cpu0",
                               "--heartbeat-interval-s", "0.2"],
                              stderr=open(tmp_path / "worker.log", "wb"))
    try:
        path = serving.demo_paths()[serving.MODELS[0]]
        with Cluster([path], cpu_workers=0, remote_workers=1, bind=addr, start_timeout_s=90) as c:
            assert c.endpoint == addr
            out = c.generate(serving.MODELS[0], "hello from afar", max_tokens=4, temperature=0)
            assert out.completion_tokens >= 1
            assert [w["worker_id"] for w in c.stats()["workers"]] == ["otherhost-1-cpu0"]
        assert worker.poll() is None  # a remote worker outlives the controller, ready for the next one
    finally:
        worker.kill()
        worker.wait()


def test_sigint_drains_running_requests(tmp_path):
    """SIGINT lets a running stream finish, refuses new requests, and the server exits cleanly. On a server of its
    own: the module's server may serve tests run after this one (pytest-xdist's workers take tests in any order).
    Its one model on one worker: the drain of one stream needs no more, and each worker is a process to start."""
    proc, url = serving.start(tmp_path, models=serving.MODELS[:1], cpu_workers=1, log_level="WARNING",
                              start_timeout_s=120, restart_backoff_s=None)
    try:
        _drain_on_sigint(url, proc)
    finally:
        serving.stop(proc, 30)


def _drain_on_sigint(url, proc) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    stream = client.completions.create(model=serving.MODELS[0], prompt="drain me", max_tokens=48, stream=True,
                                       temperature=0)
    chunks = [next(iter(stream))]
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    with pytest.raises((openai.APIStatusError, openai.APIConnectionError)) as e:
        client.completions.create(model=serving.MODELS[0], prompt="too late", max_tokens=2)
    if isinstance(e.value, openai.APIStatusError):
        assert e.value.status_code == 503
    chunks += list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert sum(1 for c in chunks if c.choices[0].text) >= 1
    proc.wait(timeout=30)
    assert proc.returncode == 0


def test_history_file_prewarms_real_workers_and_the_burst_hits(tmp_path):
    """A load history saying qwen2-30m is busy at this time of day: the first plan loads its weights into the real
    workers' pools before any request; its first request then starts from that prewarm (a hit, no cold load)."""
    serving.write_history(tmp_path / "history.csv", "qwen2-30m", "llama-20m")
    # one worker: a prewarm needs no more, and each worker is a process to start
    with serving.demo_cluster(cpu_workers=1, history_path=str(tmp_path / "history.csv")) as c:
        pw = serving.wait_prewarmed(c, 30)
        assert pw and {p["model"] for p in pw} == {"qwen2-30m"}, pw
        worker = pw[0]["worker"]
        for _ in range(50):  # the worker's own Stats (pushed with its heartbeats) say so too
            models_on = {w["worker_id"]: w["models"] for w in c.stats()["workers"]}
            if models_on[worker].get("qwen2-30m") == "prewarmed":
                break
            time.sleep(0.1)
        assert models_on[worker].get("qwen2-30m") == "prewarmed"
        out = c.generate("qwen2-30m", "a burst arrives", max_tokens=4)
        assert out.completion_tokens >= 1
        s = c.stats()
        assert s["prewarm_hits"]["qwen2-30m"] == 1 and s["prewarm_misses"]["qwen2-30m"] == 0
