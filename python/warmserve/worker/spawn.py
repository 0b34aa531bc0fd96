"""Start a local worker process and wait until it serves.

Readiness is a line, not a sleep: the worker writes its ``Hello`` (JSON) to a pipe once torch is imported, the
pool created and its endpoint bound. If the process dies first, the error carries the tail of its log.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import time
import weakref

import msgspec

from .. import errors
from .. import protocol as P


def spawn_local_worker(
    device: str = "cpu",
    memory_gib: float | None = None,
    threads: int | None = None,
    *,
    bind: str = "tcp://127.0.0.1:0",
    worker_id: str | None = None,
    ready_timeout_s: float = 120.0,
    heartbeat_interval_s: float = 1.0,
    peer_timeout_s: float = 30.0,
    log_path: str | None = None,
    env: dict | None = None,
    extra_args: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, str]:
    """Start ``warmserve worker`` bound to ``bind``; returns (process, endpoint) once it serves.

    The process exits with its parent, and is killed when the returned Popen is garbage-collected or this
    interpreter exits. Its stderr goes to ``log_path`` (a temporary file by default, named in ``process.log_path``).
    """
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="warmserve-worker-", suffix=".log")
        os.close(fd)
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "warmserve", "worker", "--bind", bind, "--device", device, "--ready-fd", str(w),
           "--heartbeat-interval-s", str(heartbeat_interval_s), "--peer-timeout-s", str(peer_timeout_s),
           "--exit-with-parent", str(os.getpid())]
    if memory_gib is not None:
        cmd += ["--memory-gib", str(memory_gib)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if worker_id is not None:
        cmd += ["--worker-id", worker_id]
    cmd += list(extra_args)
    child_env = dict(os.environ if env is None else env)
    if threads is not None:
        child_env.setdefault("OMP_NUM_THREADS", str(threads))
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(cmd, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=child_env)
        finally:
            os.close(w)
    proc.log_path = log_path
    weakref.finalize(proc, _kill, proc.pid)
    try:
        hello = _read_ready(r, proc, ready_timeout_s, log_path)
    except BaseException:
        _kill(proc.pid)
        proc.wait()
        raise
    finally:
        os.close(r)
    proc.hello = hello
    return proc, hello.endpoint


def _read_ready(r: int, proc: subprocess.Popen, timeout_s: float, log_path: str) -> P.Hello:
    buf = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise errors.TimeoutError_(
                f"worker pid {proc.pid} not ready within {timeout_s:.0f} s; its log ({log_path}) ends:\n"
                f"{_tail(log_path)}",
                timeout_s=timeout_s, pid=proc.pid,
            )
        ready, _, _ = select.select([r], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(r, 4096)
            if not chunk:  # the worker closed the pipe without a line: it died
                break
            buf += chunk
    if b"\n" not in buf:
        rc = proc.wait(timeout=10)
        raise errors.WorkerLostError(
            f"worker exited with code {rc} before it was ready; its log ({log_path}) ends:\n{_tail(log_path)}",
            exit_code=rc, pid=proc.pid,
        )
    return msgspec.json.decode(buf.split(b"\n", 1)[0], type=P.Hello)


def _tail(path: str, n_bytes: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return "(no log)"


def _kill(pid: int) -> None:
    """Kill our child ``pid`` unless it was already reaped (then the pid may belong to someone else now)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
