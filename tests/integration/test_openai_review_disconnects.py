"""`warmserve serve` (one CPU worker, one model, one request per instance): clients that hang up while their
request waits in the controller's queue, before their first token, mid-stream, or on a whole answer of n choices.
Each of their requests is withdrawn everywhere: out of the queue, off the instance's in-flight count, and off its
worker's engine (its KV blocks given back), counted as aborted rather than run on to max_tokens."""

import json
import os
import signal
import socket
import time
import urllib.parse

import serving

MODEL = "llama-20m"
#: A generation far longer than any wait below (many seconds on one CPU thread), so an abort is told from an end.
LONG = 1500

# One server for every test here (a server's start is most of this module's time; each test leaves it idle).
# max_num_seqs 1: route() gives the instance one request at a time, its engine runs it and the rest wait in the
# controller's queue (one worker: no other instance can start for them); max_batch_tokens 32: a long prompt is
# prefilled over many steps.
server = serving.server_fixture("openai_disconnects", models=(MODEL,), cpu_workers=1, max_worker_losses_per_request=1,
                                cluster_toml="[engine]\nmax_num_seqs = 1\nmax_batch_tokens = 32\n")


def _post(url: str, path: str, body: dict) -> socket.socket:
    u = urllib.parse.urlparse(url)
    data = json.dumps(body).encode()
    s = socket.create_connection((u.hostname, u.port), timeout=60)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def _read_until(s: socket.socket, marker: bytes, timeout_s: float = 60.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout_s
    while marker not in got:
        assert time.monotonic() < deadline, got[-500:]
        chunk = s.recv(65536)
        assert chunk, got[-500:]
        got += chunk
    return got


def _outcomes(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), v in serving.metrics(url).items():
        if name == "warmserve_requests_total" and dict(labels).get("model") == MODEL:
            out[dict(labels)["outcome"]] = out.get(dict(labels)["outcome"], 0) + v
    return out


def _stats(url: str) -> tuple[int, int]:
    """(queued, in flight on instances) of MODEL."""
    _, st = serving.get_json(url + "/stats")
    return st["queued"].get(MODEL, 0), sum(i["in_flight"] for i in st["instances"] if i["model"] == MODEL)


def _until(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _warm(url: str) -> None:
    status, body = serving.post_json(url + "/v1/completions", {"model": MODEL, "prompt": "warm", "max_tokens": 2})
    assert status == 200, body


def _long(prompt: str = "go on", **kw) -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": LONG, "ignore_eos": True, "temperature": 0, **kw}


def test_a_stream_left_while_queued_before_its_first_token_is_withdrawn(server):
    url, _, _ = server
    _warm(url)
    before = _outcomes(url)
    a = _post(url, "/v1/completions", _long(stream=True))
    _read_until(a, b"data: {")  # A runs, taking the instance's one place
    b = _post(url, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                            "max_tokens": LONG, "ignore_eos": True, "stream": True})
    assert _until(lambda: _stats(url) == (1, 1), 10), _stats(url)
    b.close()  # B hangs up while it waits in the queue, before any byte of its answer
    assert _until(lambda: _stats(url) == (0, 1), 3), f"the queued request was not withdrawn: {_stats(url)}"
    a.close()  # A hangs up mid-stream
    assert serving.wait_idle(url, 5) == [], "A's generation ran on after its client left"
    after = _outcomes(url)
    assert after.get("abort", 0) - before.get("abort", 0) == 2, (before, after)
    assert after.get("length", 0) == before.get("length", 0), (before, after)
    m = serving.metrics(url)
    assert m[("warmserve_queue_length", (("model", MODEL),))] == 0
    assert m[("warmserve_inflight_requests", (("model", MODEL),))] == 0


def test_an_n3_chat_stream_left_after_its_first_token_ends_every_choice(server):
    url, _, _ = server
    _warm(url)
    before = _outcomes(url)
    s = _post(url, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 3,
                                            "max_tokens": LONG, "ignore_eos": True, "stream": True})
    _read_until(s, b'"delta":{"content":"')  # a token of the one choice running (the others wait in the queue)
    assert _stats(url) == (2, 1), _stats(url)
    s.close()
    assert serving.wait_idle(url, 5) == []
    after = _outcomes(url)
    assert after.get("abort", 0) - before.get("abort", 0) == 3, (before, after)
    assert after.get("length", 0) == before.get("length", 0), (before, after)


def test_a_whole_answer_of_n2_left_while_running_ends_both_choices(server):
    url, _, _ = server
    _warm(url)
    before = _outcomes(url)
    s = _post(url, "/v1/completions", _long(n=2))
    assert _until(lambda: _stats(url) == (1, 1), 10), _stats(url)
    time.sleep(0.5)  # it generates
    s.close()
    assert serving.wait_idle(url, 5) == []
    after = _outcomes(url)
    assert after.get("abort", 0) - before.get("abort", 0) == 2, (before, after)
    assert after.get("length", 0) == before.get("length", 0), (before, after)


def test_a_stream_whose_worker_is_lost_mid_stream_gets_an_error_event_and_ends(server):
    """n = 2 (one choice running, one queued) and max_worker_losses_per_request 1: the worker SIGKILLed after the
    first tokens fails the running choice; the client gets an SSE error event, [DONE] and the end of the chunked
    body (not a connection left open), and the queued choice is withdrawn."""
    url, proc, _ = server
    _warm(url)
    s = _post(url, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2,
                                            "max_tokens": LONG, "ignore_eos": True, "stream": True})
    got = _read_until(s, b'"delta":{"content":"')
    assert b" 200 " in got.split(b"\r\n", 1)[0], got[:200]
    pids = serving.worker_pids(proc.pid)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    got += _read_until(s, b"\r\n0\r\n\r\n", 30)  # the chunked body's end
    s.close()
    events = [e[len(b"data: "):].strip() for e in got.split(b"\r\n") if e.startswith(b"data: ")]
    assert events[-1] == b"[DONE]", events[-3:]
    err = json.loads(events[-2])["error"]
    assert "lost" in err["message"] and err["type"] == "server_error", err
    assert _until(lambda: _stats(url)[0] == 0, 3), _stats(url)
    assert serving.wait_idle(url, 30) == []  # the worker back, nothing left of either choice
    _warm(url)


def test_a_stream_left_while_it_waits_for_a_slot_behind_max_num_seqs_is_dropped(server):
    """B, waiting for the one slot A holds, is dropped when its client leaves, so that it does not run (holding KV
    blocks) once A has ended. route() sends an engine no more than its max_num_seqs, so B waits in the controller's
    queue (it used to wait in the engine's, where the worker aborted it: that path is
    unit/worker/test_inprocess.py's)."""
    url, _, _ = server
    _warm(url)
    before = _outcomes(url)
    a = _post(url, "/v1/completions", _long(stream=True))
    _read_until(a, b"data: {")
    b = _post(url, "/v1/completions", _long("another", stream=True))
    assert _until(lambda: _stats(url) == (1, 1), 10), _stats(url)
    time.sleep(0.5)  # B waits for the slot
    b.close()
    assert _until(lambda: _stats(url) == (0, 1), 3), _stats(url)
    a.close()
    assert serving.wait_idle(url, 5) == []
    time.sleep(1.0)  # had B stayed in its engine's queue, it would now run in A's place, holding KV blocks
    assert serving.idle_problems(url) == []
    after = _outcomes(url)
    assert after.get("abort", 0) - before.get("abort", 0) == 2, (before, after)


def test_a_stream_left_during_its_prompt_s_prefill_is_aborted_on_its_engine(server):
    """A 1,800-token prompt (900 "x ") prefilled 32 tokens a step (seconds): its client leaves before the first
    token, while its engine prefills it."""
    url, _, _ = server
    _warm(url)
    before = _outcomes(url)
    s = _post(url, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x " * 900}],
                                            "max_tokens": 100, "ignore_eos": True, "stream": True})
    assert _until(lambda: _stats(url) == (0, 1), 10), _stats(url)
    time.sleep(0.3)  # its prefill runs
    s.setblocking(False)
    try:
        assert s.recv(1) == b"", "the first token came before the client left: no test of a prefill"
    except BlockingIOError:
        pass
    s.close()
    assert serving.wait_idle(url, 5) == []
    after = _outcomes(url)
    assert after.get("abort", 0) - before.get("abort", 0) == 1, (before, after)
