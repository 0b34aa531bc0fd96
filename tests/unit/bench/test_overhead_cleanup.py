"""`warmserve bench overhead` removes the folder it makes for its cluster's config and logs, when it ends and when it
is interrupted (it left every warmserve-overhead-* folder behind), and an interrupt leaves no server running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

ARGS = ["bench", "overhead", "--requests", "1", "--duration-s", "0.2", "--concurrency", "1"]


def _env(tmp_path) -> dict:
    # The demo model comes from where the other tests write it ($WARMSERVE_HOME/demo, else ~/.cache/warmserve/demo),
    # already written: found when the suite was timed (25 s), a WARMSERVE_HOME of the test's own made each run
    # draw and write llama-20m afresh before its server started (12 s to its first line on the loaded machine, 5.5 s
    # without). The folder checked is TMPDIR's.
    (tmp_path / "tmp").mkdir()
    return dict(os.environ, TMPDIR=str(tmp_path / "tmp"))


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:  # gone meanwhile
            pass
    return found


def _leftovers(tmp_path) -> list[str]:
    return [n for n in os.listdir(tmp_path / "tmp") if n.startswith("warmserve-overhead-")]


def test_an_interrupt_while_the_server_starts_leaves_no_folder_and_no_server(tmp_path):
    env = _env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "warmserve"] + ARGS, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        # the server's command line names its config, which lies in the benchmark's folder
        deadline = time.monotonic() + 120
        while not _processes_mentioning(str(tmp_path / "tmp")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the benchmark ended before its server started"
            time.sleep(0.05)
        assert _processes_mentioning(str(tmp_path / "tmp")), "no server started within 120 s"
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(tmp_path / "tmp")) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _processes_mentioning(str(tmp_path / "tmp"))
    for pid in alive:  # the test's own cleanup: only processes started from this test's folder
        os.kill(pid, signal.SIGKILL)
    assert not alive, "a server outlived the interrupted benchmark"
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_finished_run_leaves_no_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "warmserve"] + ARGS, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "throughput through controller" in proc.stdout
    assert _leftovers(tmp_path) == []
