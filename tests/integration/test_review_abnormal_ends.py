"""What an abnormal end of a warmserve process leaves behind (review of SIGKILLs and exits without a close).

Found in review: `warmserve bench replay` (and `bench overhead`) run `warmserve serve` as a child in a session of its
own, and only their clean-up stops it; a bench killed with SIGKILL (the OOM killer, a CI job's timeout) left that
server running for good, re-parented to init, with its fork server and workers, their memory, its port and, for
`bench overhead`, its temp folder. Now the bench's server exits with the bench (`serve --exit-with-parent PID`).
Also found: a `serve --curve-dir` SIGKILLed while a local worker starts left its CURVE key dir in $TMPDIR, and no
later start swept it; now each dir is named by its owner's pid namespace and pid, and a start removes those whose
owner has ended (``hub_sockets.sweep_dead_owners``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import serving

pytestmark = pytest.mark.slow

MODEL = "llama-20m"
#: How long the orphaned server (and its children) may take to end once the bench is gone, seconds: a SIGTERM's
#: drain with nothing in flight, then the workers' stop (about 2 s here).
GONE_WITHIN_S = 20.0

BENCH = """
import os, sys
from warmserve.bench.replay_cluster import LiveCluster
c = LiveCluster("warmserve", [("m", "llama-20m")], cpu_workers=1, history_path="", window_s=45.0, log_dir=sys.argv[1])
print(c.proc.pid, flush=True)
sys.stdin.read()
"""


def _descendants(pid: int) -> set[int]:
    """``pid``'s process and every process below it, from /proc (a worker's parent is the fork server)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rpartition(b")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo += children.get(p, [])
    return out


def _running(pids: set[int]) -> set[int]:
    left = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X"):
                    left.add(p)
        except FileNotFoundError:
            pass
    return left


def test_a_sigkilled_benchs_serve_child_and_its_workers_exit(tmp_path):
    serving.demo_paths((MODEL,))
    bench = subprocess.Popen([sys.executable, "-c", BENCH, str(tmp_path / "logs")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    server = None
    tree: set[int] = set()
    try:
        line = bench.stdout.readline()
        assert line.strip().isdigit(), f"the bench's cluster did not start: {line!r}"
        server = int(line)
        tree = _descendants(server)  # the server, its fork server and its worker
        assert len(tree) >= 3, tree
        bench.kill()
        bench.wait()
        deadline = time.monotonic() + GONE_WITHIN_S
        while _running(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(tree), (f"{GONE_WITHIN_S:g} s after its bench was SIGKILLed, the bench's `warmserve serve` "
                                    f"(pid {server}) and its children still run: {sorted(_running(tree))}")
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for p in _running(tree | (_descendants(server) if server else set())):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


SERVE_TOML = """cpu_workers = 1
cpu_worker_memory_bytes = 536870912
cpu_worker_threads = 1
[[models]]
path = "{path}"
[server]
port = 0
"""


def _curve_dirs(tmp) -> list[str]:
    return sorted(e for e in os.listdir(tmp) if e.startswith("warmserve-curve-"))


def test_the_next_serve_sweeps_the_curve_keys_a_sigkilled_serve_left_while_its_worker_started(tmp_path):
    """Found in review: `serve --curve-dir` killed with SIGKILL while a local worker starts (its key files are on
    disk until the worker's Hello) leaves $TMPDIR/warmserve-curve-*, the local workers' secret key in it, and no
    later start removes it: one more each time."""
    import zmq.auth

    keys = tmp_path / "keys"
    (keys / "workers").mkdir(parents=True)
    zmq.auth.create_certificates(str(keys), "server")
    os.chmod(keys / "server.key_secret", 0o600)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(SERVE_TOML.format(path=serving.demo_paths((MODEL,))[MODEL]))
    env = {**os.environ, "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "warmserve", "serve", "--config", str(cfg), "--curve-dir", str(keys),
           "--log-level", "WARNING"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not _curve_dirs(tmp) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert _curve_dirs(tmp), "the first server wrote no CURVE key files"
        tree = _descendants(first.pid)
        first.kill()
        first.wait()
        deadline = time.monotonic() + GONE_WITHIN_S
        while _running(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _curve_dirs(tmp)
        assert left, "set-up: the killed server left no key files (killed after its worker's Hello?)"
        second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert '"serving"' in second.stdout.readline(), "the second server did not start"
        assert serving.stop(second) == 0
        assert _curve_dirs(tmp) == [], f"a later serve left the dead one's {left} (a secret key in each) in $TMPDIR"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                tree |= _descendants(proc.pid)
        for p in _running(tree):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.wait()
