"""`warmserve serve` under faults seen from outside: a local worker SIGKILLed is restarted and the cluster returns
to full capacity; a client that hangs up on a non-streaming request has its generation aborted."""

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.parse

import pytest

import serving

openai = pytest.importorskip("openai")


server = serving.server_fixture("restart")


def _ask(url: str, model: str, prompt: str, max_tokens: int = 4):
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    return client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)


def test_a_killed_local_worker_is_restarted_and_the_cluster_is_back_to_full_capacity(server):
    url, proc, tmp = server
    for m in serving.MODELS:
        assert _ask(url, m, "warm up").usage.completion_tokens >= 1
    _, before = serving.get_json(url + "/stats")
    assert sum(w["ready"] for w in before["workers"]) == 2
    pids = serving.worker_pids(proc.pid)
    assert len(pids) == 2, pids
    os.kill(pids[0], signal.SIGKILL)
    t_kill = time.monotonic()

    # Requests keep being answered while it is away (on the survivor) and once it is back.
    answered = 0
    deadline = t_kill + 60
    back = False
    while time.monotonic() < deadline:
        answered += _ask(url, serving.MODELS[answered % 2], f"still there {answered}").usage.completion_tokens >= 1
        _, st = serving.get_json(url + "/stats")
        ready = [w for w in st["workers"] if w["ready"]]
        # /stats lists live workers only: the dead one is gone, its restart joined under the same worker id and a
        # new GPU id. Until the loss is noticed the old record still looks ready, so wait for the new GPU id.
        renewed = {w["gpu_id"] for w in st["workers"]} != {w["gpu_id"] for w in before["workers"]}
        if renewed and len(st["workers"]) == 2 and len(ready) == 2 and all(w["alive"] for w in st["workers"]):
            back = True
            break
        time.sleep(0.2)
    assert back, (tmp / "serve.log").read_text()[-3000:]
    assert time.monotonic() - t_kill < 60 and answered >= 1
    new_pids = serving.worker_pids(proc.pid)
    assert len(new_pids) == 2 and pids[0] not in new_pids and pids[1] in new_pids
    _, st = serving.get_json(url + "/stats")
    gone = {w["gpu_id"] for w in before["workers"]} - {w["gpu_id"] for w in st["workers"]}
    assert len(gone) == 1, "the restarted worker is a new GPU; the dead one's id is not reused"
    _, health = serving.get_json(url + "/health")
    assert health["ok"] and health["workers"] == 2
    # Both workers serve again: enough concurrent requests that the policy may use either; all are answered.
    for m in serving.MODELS:
        assert _ask(url, m, "after the restart").usage.completion_tokens >= 1
    assert serving.counter(url, "warmserve_workers_lost") == 1
    assert serving.wait_idle(url) == []


def _raw_post(url: str, body: dict) -> socket.socket:
    u = urllib.parse.urlparse(url)
    data = json.dumps(body).encode()
    s = socket.create_connection((u.hostname, u.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def _in_flight(url: str) -> int:
    _, st = serving.get_json(url + "/stats")
    return sum(i["in_flight"] for i in st["instances"])


def test_a_non_streaming_client_that_hangs_up_has_its_generation_aborted(server):
    """A long non-streaming generation (about 1,000 tokens, many seconds on one CPU thread) whose client closes
    its connection leaves the instance within a couple of seconds instead of running to the end."""
    url, _, _ = server
    model = serving.MODELS[0]
    _ask(url, model, "warm up")
    body = {"model": model, "prompt": "go on and on", "max_tokens": 1000, "ignore_eos": True, "temperature": 0}
    s = _raw_post(url, body)
    deadline = time.monotonic() + 30
    while _in_flight(url) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _in_flight(url) == 1
    time.sleep(1.0)  # it is generating
    s.close()
    t_close = time.monotonic()
    while _in_flight(url) and time.monotonic() - t_close < 5:
        time.sleep(0.05)
    gone_after_s = time.monotonic() - t_close
    assert _in_flight(url) == 0, "the abandoned generation still runs"
    assert gone_after_s < 3.0
    # A control: the same request with the client waiting takes far longer than that (it was really aborted): its
    # 1,000 tokens take as many seconds as one token takes milliseconds, measured on a sample of them (100 tokens
    # give the rate as well as more would; only a few milliseconds of the sample's time are not per token).
    sample = 100
    t0 = time.monotonic()
    out = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120).completions.create(
        model=model, prompt="go on and on", max_tokens=sample, temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == sample
    assert (time.monotonic() - t0) * 1000 / sample > gone_after_s
    assert serving.wait_idle(url) == []


def test_huge_prompts_are_refused_fast_while_health_stays_responsive(server):
    """A 15 MB text prompt, a 4 MB chat message and 2.5 million token ids (each under the 16 MiB body limit):
    each is a 400 within seconds (by size, before or without tokenising), and /health answers meanwhile."""
    import threading
    import urllib.request

    url, _, _ = server
    model = serving.MODELS[0]
    bodies = [
        ("/v1/completions", {"model": model, "prompt": "word " * (3 << 20), "max_tokens": 4}),
        ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "w" * (4 << 20)}]}),
        ("/v1/completions", {"model": model, "prompt": [7] * 2_500_000, "max_tokens": 4}),
    ]
    # Encoded before the watcher starts: json.dumps of 2.5 million ids holds this process's GIL for 0.2 s (more on a
    # loaded machine), which the watcher's own /health timings would count.
    datas = [(path, json.dumps(body).encode()) for path, body in bodies]
    slowest = []
    failed = []  # what ended the watcher: re-raised on the test's thread, where pytest sees it
    done = threading.Event()

    def watch():
        try:
            while not done.is_set():
                t = time.monotonic()
                status = serving.get_json(url + "/health")[0]
                slowest.append((time.monotonic() - t, status))  # checked on the test's thread
                time.sleep(0.02)
        except BaseException as e:
            failed.append(e)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for path, data in datas:
            assert len(data) < 16 << 20
            t0 = time.monotonic()
            req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=60)
            took = time.monotonic() - t0
            assert e.value.code == 400 and "context" in json.loads(e.value.read())["error"]["message"]
            assert took < 3.0, (path, took)
    finally:
        done.set()
        watcher.join()
    if failed:
        raise failed[0]
    # Responsive: the 15 MB prompt tokenised on the event loop would hold /health for 16 s (this machine, its demo
    # tokenizer); a /health took up to 1.9 s (1.0 s was the bound) on a loaded 2-core run, hence 2.5 s.
    assert slowest and max(slowest)[0] < 2.5 and {st for _, st in slowest} == {200}, max(slowest)


def test_serve_refuses_a_network_worker_socket_without_curve(tmp_path):
    """`warmserve serve --bind tcp://0.0.0.0:0` with no --curve-dir would admit any host as a worker: it exits 2
    (the caller's to fix) at once, naming both fixes, and starts no worker."""
    import subprocess
    import sys

    paths = serving.demo_paths(serving.MODELS[:1])
    proc = subprocess.run([sys.executable, "-m", "warmserve", "serve", "--model", paths[serving.MODELS[0]],
                           "--port", "0", "--cpu-workers", "1", "--bind", "tcp://0.0.0.0:0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "InsecureBindError" in proc.stderr, proc.stderr[-2000:]
    assert "--curve-dir" in proc.stderr and "--insecure" in proc.stderr
    assert "serving" not in proc.stdout
