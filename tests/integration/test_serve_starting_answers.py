"""`warmserve serve` answers while it starts (found in review: waiting for a remote worker, /health and every request
waited in the listen backlog unanswered until the cluster was up, so a probe or a client timed out with no word):
503 at once, /health saying it starts, requests told to retry; the API itself once the worker joined."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import serving
from net_ports import free_port

MODEL = "llama-20m"


def test_serve_answers_503_while_it_waits_for_its_workers_then_serves(tmp_path):
    port, workers_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{workers_port}"
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "serve.log", "w") as err:
        serve = subprocess.Popen(
            [sys.executable, "-m", "warmserve", "serve", "--model", serving.demo_paths((MODEL,))[MODEL],
             "--cpu-workers", "0", "--remote-workers", "1", "--bind", endpoint, "--port", str(port)],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
    procs = [serve]
    try:
        deadline = time.monotonic() + 60
        while True:  # the port is bound before anything starts; the starting answers follow at once
            try:
                status, body = serving.get_json(url + "/health")
                break
            except OSError:
                assert time.monotonic() < deadline and serve.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)
        assert status == 503 and body["starting"] is True and body["ok"] is False, body
        req = urllib.request.Request(url + "/v1/completions", data=json.dumps(
            {"model": MODEL, "prompt": "hi", "max_tokens": 2}).encode(), headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("a request was served before any worker joined")
        except urllib.error.HTTPError as e:
            assert e.code == 503 and e.headers["Retry-After"], e.headers
            assert "starting" in json.loads(e.read())["error"]["message"]
        with open(tmp_path / "worker.log", "w") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "warmserve", "worker", "--controller", endpoint, "--worker-id", "w0",
                 "--threads", "1", "--memory-gib", "0.5"], stdout=subprocess.DEVNULL, stderr=err,
                stdin=subprocess.DEVNULL))
        ready, _, _ = select.select([serve.stdout], [], [], 90)
        line = serve.stdout.readline() if ready else ""
        assert line and json.loads(line)["serving"] == url, (tmp_path / "serve.log").read_text()[-3000:]
        status, body = serving.get_json(url + "/health")
        assert status == 200 and "starting" not in body, body
        status, body = serving.post_json(url + "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2},
                                         timeout_s=60)
        assert status == 200, body
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        serve.stdout.close()
