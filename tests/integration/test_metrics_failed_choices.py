"""What /metrics counts for answers that fail part-way (found in review): an n = 2 request whose second choice was
refused counted its first choice as a client abort (and its 503 named that choice as another request waiting); a
stream that failed after its 200 counted a 503 rejection that no client saw."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import serving

MODEL = "llama-20m"


def _post(url: str, body: dict) -> tuple[int, dict]:
    return serving.post_json(url + "/v1/completions", body)


def _count(url: str, name: str, **labels) -> float:
    return sum(v for (n, ls), v in serving.metrics(url).items()
               if n == name and all(dict(ls).get(k) == str(x) for k, x in labels.items()))


def test_a_refused_choice_counts_its_sibling_as_an_error_not_an_abort(tmp_path):
    proc, url = serving.start(tmp_path, models=(MODEL,), cpu_workers=1, max_queue=1, restart_backoff_s=1.0)
    try:
        assert _post(url, {"model": MODEL, "prompt": "warm", "max_tokens": 2})[0] == 200
        aborts = _count(url, "warmserve_requests_total", outcome="abort")
        errors = _count(url, "warmserve_requests_total", outcome="error")
        os.kill(serving.worker_pids(proc.pid)[0], signal.SIGKILL)
        time.sleep(0.4)  # the worker is lost and restarting: the first choice waits, the second finds it there
        status, body = _post(url, {"model": MODEL, "prompt": "two choices", "max_tokens": 3, "n": 2})
        assert status == 503 and "1 of them earlier choices of this request" in body["error"]["message"], body
        deadline = time.monotonic() + 10
        while _count(url, "warmserve_requests_total", outcome="error") == errors and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _count(url, "warmserve_requests_total", outcome="error") == errors + 1
        assert _count(url, "warmserve_requests_total", outcome="abort") == aborts  # the client stayed
    finally:
        serving.stop(proc)


def test_a_stream_that_fails_after_its_200_is_no_rejection(tmp_path):
    proc, url = serving.start(tmp_path, models=(MODEL,), cpu_workers=1, max_worker_losses_per_request=1)
    got, first = {}, threading.Event()

    def read():
        body = {"model": MODEL, "prompt": "x", "max_tokens": 1500, "ignore_eos": True, "stream": True}
        req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                got["status"] = r.status
                for line in r:
                    if line.startswith(b"data: {"):
                        event = json.loads(line[6:])
                        if "error" in event:
                            got["error"] = event["error"]["code"]
                        first.set()
        except BaseException as e:  # noqa: BLE001 (reaches the test's thread through got)
            got["raised"] = e
            first.set()

    try:
        rejected = _count(url, "warmserve_rejected_requests_total")
        t = threading.Thread(target=read, daemon=True)
        t.start()
        assert first.wait(60)
        time.sleep(0.2)
        os.kill(serving.worker_pids(proc.pid)[0], signal.SIGKILL)
        t.join(60)
        assert "raised" not in got, got
        assert got["status"] == 200 and got.get("error"), got  # failed as an SSE event after the 200
        assert _count(url, "warmserve_requests_total", outcome="worker_lost") == 1
        assert _count(url, "warmserve_rejected_requests_total") == rejected
    finally:
        serving.stop(proc)
