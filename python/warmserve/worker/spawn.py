"""Start a local worker process and wait until it serves.

Readiness is a line, not a sleep: the worker writes its ``Hello`` (JSON) to a pipe once torch is imported, the
pool created and its endpoint bound. If the process dies first, the error carries the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import weakref

import msgspec

from .. import errors
from .. import protocol as P

#: How long a collected worker's Popen waits for the killed worker to be reaped, seconds (a SIGKILLed process ends
#: in milliseconds; past it, subprocess reaps it later, as any Popen it keeps in ``subprocess._active``).
_REAP_ON_COLLECT_S = 5.0


class _WorkerPopen(subprocess.Popen):
    """The Popen of a worker from ``spawn_local_worker``: collected while its worker runs, it kills and reaps it.

    Found in review: a weakref finalizer was to do it, but ``Popen.__del__`` keeps a running child alive in
    ``subprocess._active`` (to reap it later), so the finalizer never ran and the worker served on unowned. The
    child is still unreaped here, so its pid cannot be another process's.

    Its log, when ``spawn_local_worker`` made it, goes once the worker has ended cleanly: exit status 0, or a signal
    this Popen sent. Found in review: each worker left one file in /tmp. A worker that failed keeps it, since the
    errors name it; a caller's own ``log_path`` always stays (the way to keep a clean end's log)."""

    #: Whether ``log_path`` is spawn_local_worker's own, of a worker that started: removed at a clean end.
    _own_log = False
    #: The signals sent through this Popen while the worker ran: a death by one of them is ours, not a failure.
    _sent: frozenset[int] = frozenset()

    def send_signal(self, sig):
        if self.poll() is None:
            self._sent |= {sig}  # before the signal: the worker may be reaped of it before this line would run
        super().send_signal(sig)

    def poll(self):
        rc = super().poll()
        self._ended()
        return rc

    def wait(self, timeout=None):
        rc = super().wait(timeout)
        self._ended()
        return rc

    def _ended(self) -> None:
        rc = self.returncode
        if self._own_log and rc is not None and (rc == 0 or -rc in self._sent):
            self._own_log = False
            _remove(self.log_path)

    def __del__(self, *args, **kwargs):
        # Only what Popen's own __del__ would keep: a child that was started and whose exit nobody read yet.
        if getattr(self, "_child_created", False) and self.returncode is None:
            with contextlib.suppress(Exception):  # in __del__ (possibly at interpreter exit): nothing may raise
                self.send_signal(signal.SIGKILL)
                self.wait(_REAP_ON_COLLECT_S)
        super().__del__(*args, **kwargs)


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

    The process exits with its parent, and is killed (and reaped) when the returned Popen is garbage-collected or
    this interpreter exits. Its stderr goes to ``log_path`` (a temporary file by default, named in
    ``process.log_path``, and removed once the worker has ended cleanly: see ``_WorkerPopen``).
    """
    own_log = log_path is None
    if own_log:
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
            proc = _WorkerPopen(cmd, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=child_env)
        finally:
            os.close(w)
    proc.log_path = log_path
    # At interpreter exit, for a Popen still referenced then (a collected one kills its worker itself).
    weakref.finalize(proc, _kill, proc.pid, log_path if own_log else None)
    try:
        hello = _read_ready(r, proc, ready_timeout_s, log_path)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(r)
    proc.hello = hello
    proc._own_log = own_log  # only now: every error of a start that failed names the log, even an exit 0's
    return proc, hello.endpoint


def _read_ready(r: int, proc: subprocess.Popen, timeout_s: float, log_path: str) -> P.Hello:
    buf = b""
    deadline = time.monotonic() + timeout_s
    # poll, not select: found in review, select refuses a descriptor numbered past 1,023 (a process with many
    # connections or files open).
    watch = select.poll()
    watch.register(r, select.POLLIN)
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise errors.TimeoutError_(
                f"worker pid {proc.pid} not ready within {timeout_s:g} s; its log ({log_path}) ends:\n"
                f"{_tail(log_path)}",
                timeout_s=timeout_s, pid=proc.pid,
            )
        if watch.poll(min(left, 0.5) * 1000):  # POLLIN, or POLLHUP once the worker's end is closed
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


def _kill(pid: int, log_path: str | None = None) -> None:
    """Kill our child ``pid`` unless it has ended (then it is reaped here, or was already: the pid may belong to
    someone else now, and its Popen saw to the log). ``log_path``: spawn_local_worker's own log, removed unless the
    worker failed by itself."""
    try:
        ended, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    if ended:
        if log_path is not None and os.waitstatus_to_exitcode(status) == 0:
            _remove(log_path)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if log_path is not None:
        _remove(log_path)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
