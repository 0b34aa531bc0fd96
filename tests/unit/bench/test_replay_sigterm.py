"""`warmserve bench replay` as real processes: a SIGTERM once its `serve` child is up stops that child too (found
in review: the child, in a session of its own and closed only in a ``finally`` a SIGTERM skipped, kept running
with its workers), and the wait for t = 0 on the policy's window grid is said (it printed nothing for 5-10
minutes at the default window)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from proc_tree import alive, children

#: a 30 s window puts t = 0 30-60 s after the launch; `serve` is up after ~10 s, so the bench is waiting then
CMD = ["--policy", "warmserve", "--models", "1", "--cpu-workers", "1", "--duration-s", "60", "--rate", "0.5",
       "--start-lead-s", "5", "--window-s", "30", "--pre-s", "60", "--checkpoints", "llama-20m", "--quiet"]


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
    """Run the bench until it waits for t = 0 (or 90 s), SIGTERM it, and record what it said and left running."""
    logs = tmp_path_factory.mktemp("replay-sigterm")
    bench = subprocess.Popen([sys.executable, "-m", "warmserve", "bench", "replay", *CMD, "--log-dir", str(logs)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    waiting = threading.Event()

    def read():
        for line in bench.stderr:
            lines.append(line)
            if "waits" in line and "t = 0" in line:
                waiting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    serve_log = logs / "serve-warmserve.log"
    serve: list[int] = []
    try:
        deadline = time.monotonic() + 90
        ready = False
        while time.monotonic() < deadline and bench.poll() is None:
            serve = serve or children(bench.pid)
            ready = serve_log.exists() and "ready:" in serve_log.read_text(errors="replace")
            # the line comes once serve printed its serving line; a bench that never says it gets 20 s
            if waiting.wait(0.2) or (ready and time.monotonic() > deadline - 70):
                break
        assert serve and bench.poll() is None, f"the bench never started serve: {''.join(lines)[-2000:]}"
        assert waiting.is_set() or ready, f"serve never came up: {''.join(lines)[-2000:]}"
        bench.send_signal(signal.SIGTERM)
        rc = bench.wait(60)
        reader.join(10)
        gone_by = time.monotonic() + 10
        while any(alive(p) for p in serve) and time.monotonic() < gone_by:
            time.sleep(0.2)
        yield {"rc": rc, "stderr": "".join(lines), "serve_left": [p for p in serve if alive(p)]}
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for p in serve:  # only this run's own child, by its pid; it runs in a group of its own
            if alive(p):
                os.killpg(p, signal.SIGKILL)


def test_a_sigterm_stops_the_serve_child_too(sigterm_run):
    assert sigterm_run["serve_left"] == [], f"serve {sigterm_run['serve_left']} outlived the bench"
    assert sigterm_run["rc"] == 128 + signal.SIGTERM, sigterm_run["stderr"][-2000:]


def test_the_wait_for_t0_is_said(sigterm_run):
    said = [ln for ln in sigterm_run["stderr"].splitlines() if "t = 0" in ln and "waits" in ln]
    assert len(said) == 1 and "30 s window grid" in said[0], sigterm_run["stderr"][-2000:]


CHILD = """
import os, signal, time
from warmserve.bench.exit_signals import exit_on_signals
try:
    with exit_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            print("not stopped", flush=True)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a second kill during the clean-up
            time.sleep(0.3)
            print("clean-up done", flush=True)
finally:
    print("handler restored" if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else "handler left", flush=True)
"""


def test_the_first_sigterm_exits_through_the_clean_up_and_a_second_does_not_cut_it_short():
    p = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, (p.stdout, p.stderr)
    assert p.stdout.split() == ["clean-up", "done", "handler", "restored"], (p.stdout, p.stderr)
