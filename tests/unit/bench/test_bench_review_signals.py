"""`bench overhead` and `bench switch` as real processes, ended by SIGTERM (timeout(1), a job scheduler, systemd).

Found in review: SIGTERM's default action ended them at once, skipping every ``finally``: `bench overhead` left its
`warmserve serve` child running (re-parented to init) and its warmserve-overhead-* folder; `bench switch` left its
temporary folder (with the checkpoint or blob it wrote, hundreds of MiB) and its warmserve-bench-cache-* folder in
--cache-root (/dev/shm by default). Both now end through their clean-up (``exit_signals.exit_on_signals``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from proc_tree import alive, children


def _start(argv, tmp_path) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    proc = subprocess.Popen([sys.executable, "-m", "warmserve", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    return proc, lines, reader


def _stop(proc: subprocess.Popen, kids: list[int]) -> None:
    """What the test started, by its ids: the bench and the children it had."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for k in kids:
        if alive(k):
            os.kill(k, signal.SIGKILL)


def test_sigterm_to_bench_overhead_stops_its_server_and_removes_its_folder(tmp_path):
    proc, lines, reader = _start(["bench", "overhead", "--requests", "5000", "--duration-s", "0.5",
                                  "--concurrency", "1"], tmp_path)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not any("sequential latency" in ln for ln in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)[-2000:]
            time.sleep(0.1)
        kids = children(proc.pid)  # the `serve` child and the bare worker
        assert kids and proc.poll() is None, "".join(lines)[-2000:]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(90)
        reader.join(10)
        gone_by = time.monotonic() + 15
        while any(alive(k) for k in kids) and time.monotonic() < gone_by:
            time.sleep(0.2)
        assert not [k for k in kids if alive(k)], "a child of the benchmark outlived it"
        assert not os.listdir(tmp_path / "tmp"), os.listdir(tmp_path / "tmp")
        assert rc == 128 + signal.SIGTERM, "".join(lines)[-2000:]
    finally:
        _stop(proc, kids)


def test_sigterm_to_bench_switch_removes_its_temp_and_cache_folders(tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    proc, lines, reader = _start(["bench", "switch", "--parts", "cache", "--cache-gib", "0.1", "--repeats", "300",
                                  "--cache-root", str(shm)], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not os.listdir(shm) and time.monotonic() < deadline:  # the cache part runs
            assert proc.poll() is None, "".join(lines)[-2000:]
            time.sleep(0.05)
        assert os.listdir(shm) and os.listdir(tmp_path / "tmp"), "".join(lines)[-2000:]
        time.sleep(0.3)
        assert proc.poll() is None, "the cache part ended before the signal: " + "".join(lines)[-2000:]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        reader.join(10)
        assert not os.listdir(shm), f"left in --cache-root: {os.listdir(shm)}"
        assert not os.listdir(tmp_path / "tmp"), f"left in TMPDIR: {os.listdir(tmp_path / 'tmp')}"
        assert rc == 128 + signal.SIGTERM, "".join(lines)[-2000:]
    finally:
        _stop(proc, [])
