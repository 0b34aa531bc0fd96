"""`warmserve serve` and its signals and sockets, seen from outside: a second Ctrl-C ends the drain, the HTTP socket
keeps the backlog it was made with, and a Ctrl-C while the demo checkpoints are written stops the start cleanly.
Found in review: a second SIGINT did nothing (shutdown took the whole drain_timeout_s), aiohttp listened again with
its default backlog of 128, and a Ctrl-C during the demo writer read as its failure, with its traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import serving

MODEL = "llama-20m"
DRAIN_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signals")
    proc, url = serving.start(tmp, models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20,
                              drain_timeout_s=DRAIN_TIMEOUT_S)
    yield url, proc, tmp
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_the_http_socket_keeps_its_backlog(server):
    url, _, _ = server
    port = url.rsplit(":", 1)[1]
    # For a listening socket, ss's Send-Q column is its backlog (as capped by net.core.somaxconn).
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    with open("/proc/sys/net/core/somaxconn") as f:
        want = min(1024, int(f.read()))  # serve.LISTEN_BACKLOG
    backlogs = [int(line.split()[2]) for line in out.splitlines() if line.strip()]
    assert backlogs and all(b == want for b in backlogs), out


def test_a_second_sigint_ends_the_drain(server):
    url, proc, tmp = server
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0, "ignore_eos": True,
            "stream": True}
    got = {"tokens": 0, "finish": None, "error": None}
    first = threading.Event()

    def read():
        try:
            req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                for line in r:
                    if line.startswith(b"data: {"):
                        choice = json.loads(line[6:])["choices"][0]
                        got["tokens"] += 1
                        got["finish"] = choice.get("finish_reason") or got["finish"]
                        first.set()
        except Exception as e:  # a connection cut by the stop is the expected end; kept for the message
            got["error"] = repr(e)
        finally:
            first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first.wait(60) and got["error"] is None, got
    proc.send_signal(signal.SIGINT)
    log = tmp / "serve.log"
    deadline = time.monotonic() + 20
    while "draining" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "draining" in log.read_text(), log.read_text()[-2000:]
    time.sleep(0.5)
    assert reader.is_alive(), got  # the request is still running: the drain is waiting for it
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=DRAIN_TIMEOUT_S / 2)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a second SIGINT did not end the {DRAIN_TIMEOUT_S} s drain: still running after "
                    f"{DRAIN_TIMEOUT_S / 2:.0f} s; {got}")
    stopped_s = time.monotonic() - t0
    reader.join(30)
    assert rc == 0, log.read_text()[-3000:]
    assert got["finish"] != "length" and got["tokens"] < body["max_tokens"], got  # cut short, not finished
    assert stopped_s < DRAIN_TIMEOUT_S / 2
    # The person at the terminal is told, whatever the log level.
    assert "Ctrl-C again to stop now" in log.read_text()


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""


def test_ctrl_c_while_the_demo_checkpoints_are_written_stops_cleanly(tmp_path):
    """Ctrl-C in a terminal signals the whole process group: the server and its demo writer."""
    err_path = tmp_path / "serve.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "warmserve", "serve", "--port", "0", "--cpu-workers", "1"],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                env=dict(os.environ, WARMSERVE_HOME=str(tmp_path / "home")))
    try:
        deadline = time.monotonic() + 60
        writer = []
        while not writer and time.monotonic() < deadline:
            writer = [k for k in _children(proc.pid) if "models demo" in _cmdline(k)]
            time.sleep(0.05)
        assert writer, "the demo writer did not start: " + err_path.read_text()[-2000:]
        time.sleep(1.0)  # inside its start-up (imports, writing): where the review's Ctrl-C landed
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=60)
        text = err_path.read_text()
        assert "stopped while starting" in text, text[-3000:]
        assert "failed" not in text and "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
        assert rc == 0, text[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
