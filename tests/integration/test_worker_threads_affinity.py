"""`warmserve serve` started on fewer cores than the machine has (taskset, a container's or a batch job's cpuset)
gives its CPU workers threads from those cores, not from the machine's count. Found in review: the default threads
were os.cpu_count() // workers, every core of the host, so a job given a few cores of a large host ran each worker
with several torch threads to a core."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

import pytest

import serving


def _worker_threads(serve_pid: int) -> list[str]:
    """The --threads of each worker this server started (their command lines, as setproctitle shows them)."""
    tag, found = f"-{serve_pid}w", []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            continue
        if "worker" in args and "--threads" in args and any(tag in a for a in args):
            found.append(args[args.index("--threads") + 1])
    return found


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to start the server on one of them")
def test_a_server_on_one_core_gives_its_cpu_worker_one_thread(tmp_path):
    path = serving.demo_paths(("llama-20m",))["llama-20m"]
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(f'cpu_workers = 1\ncpu_worker_memory_bytes = 805306368\n[[models]]\npath = "{path}"\n'
                   "[server]\nport = 0\n")
    one_core = min(os.sched_getaffinity(0))
    proc = subprocess.Popen([sys.executable, "-m", "warmserve", "serve", "--config", str(cfg), "--log-dir",
                             str(tmp_path / "logs")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {one_core}))
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready and json.loads(proc.stdout.readline())["serving"], "the server did not start"
        assert _worker_threads(proc.pid) == ["1"]  # before: os.cpu_count() of them, 2 on a 2-core machine
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
