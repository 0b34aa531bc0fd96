"""`warmserve serve` and its terminal, seen from outside. Found in review: the terminal closing (SIGHUP) killed the
server on the spot, and with its stderr gone (a hung-up terminal, `serve 2>&1 | head`) a SIGTERM ended it at once,
exit 1, as the "shutting down" line raised BrokenPipeError before the drain: either way the requests in flight were
cut off unanswered. And a controller stopped (Ctrl-Z, `kill -STOP`) for longer than its local workers' 10 s
--peer-timeout-s came back to every worker "lost" and their requests started over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import serving

MODEL = "llama-20m"
TOKENS = 300


def _stream(url: str, got: dict, first: threading.Event) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    try:
        req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=150) as r:
            got["status"] = r.status
            for line in r:
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        got["error"] = chunk["error"]
                    for choice in chunk.get("choices", ()):
                        got["finish"] = choice.get("finish_reason") or got["finish"]
                    if chunk.get("usage"):  # the last chunk's totals
                        got["tokens"] = chunk["usage"]["completion_tokens"]
                    first.set()
    except Exception as e:  # kept for the assertion's message, read on the test's thread
        got["error"] = repr(e)
    finally:
        first.set()


def _start_stream(url: str):
    got = {"status": None, "tokens": 0, "finish": None, "error": None}
    first = threading.Event()
    reader = threading.Thread(target=_stream, args=(url, got, first), daemon=True)
    reader.start()
    assert first.wait(90) and got["error"] is None, got
    return reader, got


def _gone_within(pids, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(serving.pid_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if serving.pid_alive(p)]


def test_sighup_with_its_stderr_gone_drains_the_request_in_flight(tmp_path):
    path = serving.demo_paths((MODEL,))[MODEL]
    proc = subprocess.Popen(
        [sys.executable, "-m", "warmserve", "serve", "--model", path, "--cpu-workers", "1", "--cpu-worker-threads",
         "1", "--port", "0"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, WARMSERVE_HOME=str(tmp_path)), start_new_session=True)
    try:
        url = json.loads(proc.stdout.readline())["serving"]
        for line in proc.stderr:  # what a terminal shows until it is closed
            if b"ready:" in line:
                break
        workers = serving.worker_pids(proc.pid)
        assert workers
        proc.stderr.close()  # its reader gone: each write to it now fails (EPIPE), as on a hung-up terminal (EIO)
        reader, got = _start_stream(url)
        proc.send_signal(signal.SIGHUP)
        rc = proc.wait(60)
        reader.join(30)
        assert got["error"] is None and got["status"] == 200, got
        assert (got["tokens"], got["finish"]) == (TOKENS, "length"), got
        assert rc == 0
        assert _gone_within(workers, 30) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_controller_stopped_past_its_workers_old_peer_timeout_loses_no_worker(tmp_path):
    proc, url = serving.start(tmp_path, models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20)
    try:
        reader, got = _start_stream(url)
        proc.send_signal(signal.SIGSTOP)  # as Ctrl-Z does, or a debugger: past the 10 s its workers were given
        time.sleep(12)
        proc.send_signal(signal.SIGCONT)
        reader.join(120)
        assert got["error"] is None and (got["tokens"], got["finish"]) == (TOKENS, "length"), got
        assert serving.counter(url, "warmserve_workers_lost") == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert ") lost: " not in (tmp_path / "serve.log").read_text()
    finally:
        serving.stop(proc)


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def _sig_ignored(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as f:
        mask = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
    return {s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if mask & (1 << (s - 1))}


def test_sigterm_to_every_process_at_once_drains_the_request_in_flight(tmp_path):
    """systemd's stop (KillMode=control-group, its default) and `pkill -f warmserve` signal the controller, its
    fork server and its workers at once. Found in review: the fork server died on the spot, and its children, which
    watch it, aborted their requests: 503 within 0.4 s, no drain."""
    proc, url = serving.start(tmp_path, models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20)
    try:
        servers = [k for k in serving._children(proc.pid) if b"forkserver" in _cmdline(k)]
        workers = serving.worker_pids(proc.pid)
        assert servers and workers, (servers, workers)  # CPU workers are forked (fork_cpu_workers)
        assert all(_sig_ignored(w) == set() for w in workers)  # as a fresh interpreter's, not the server's
        reader, got = _start_stream(url)
        everyone = [proc.pid, *servers, *workers]
        for pid in everyone:
            os.kill(pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        reader.join(30)
        assert got["error"] is None and (got["tokens"], got["finish"]) == (TOKENS, "length"), got
        assert _gone_within(everyone, 30) == []
    finally:
        serving.stop(proc)
