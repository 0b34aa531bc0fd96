"""Local CPU workers forked from a process that has imported torch and the engine once.

Why: most of a CPU worker's start is ``import torch`` (about 2.6 s of the 3.4 s a fresh `warmserve worker` took to
say Hello on the 2-core VM), paid again by every start and every restart of a lost worker. The fork server is one
child of the controller's process, started on its first forked spawn: it imports torch and the worker's modules,
then forks one child per worker. A child carries the imports and nothing else of the server's (which never ran a
torch op, made a ZeroMQ context or started a thread of its own), and runs `warmserve worker` with the argv,
environment, working directory, stdout and stderr its spawner gave, in a session of its own, as a Popen child would.

Not forked: GPU workers (a fresh interpreter; CUDA and fork do not mix once a context exists, and a GPU worker's
start is the device's anyway) and `autoscale`'s cold starts (``fresh_interpreters``: a vanilla autoscaler starts a
new engine process, and that cost is what the baseline measures).

The protocol is msgspec msgpack over a Unix SEQPACKET socket pair, one message each way per event: the spawner sends a
request with the child's stdout and stderr attached (SCM_RIGHTS), so a log file, or whatever the controller's
stderr is at that moment, is the child's; the server answers the child's pid, and later its exit status, which it
learns from a pidfd per child (no SIGCHLD handler: nothing asynchronous runs in a process that forks; SIGCHLD at its
default, whatever the launcher left, or the kernel would reap the children before the server could), and passes
that pidfd along: the spawner signals its children through it, so a pid reaped and reused is never signalled. The
environment, argv and working directory travel as bytes, as the OS holds them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import select
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref

import msgspec

from .. import errors

log = logging.getLogger("warmserve.worker.forkserver")

#: The exit status a child is given when its fork server went first and nobody can read the real one (the child
#: itself exits then: its parent, the server, is gone: ``--exit-with-parent``).
STATUS_UNKNOWN = 255
#: How long a spawn waits for a ready server's answer, seconds: a fork takes milliseconds, and the wait may be on
#: the controller's event loop; past it the server is stopped and the worker starts as a fresh interpreter.
SPAWN_REPLY_TIMEOUT_S = 2.0
#: The signals that stop a warmserve process, which the server ignores (``main``).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Their dispositions as the server was started, for its children: a fresh interpreter would have them.
_inherited: dict[int, object] = {}
#: Longest message either way, bytes (a request carries the child's whole environment).
MESSAGE_MAX_BYTES = 1 << 20
#: A server with no child for this long exits, seconds (the next spawn starts another): long enough for a process
#: that starts clusters one after another (a test suite, a benchmark's runs) to keep one server.
IDLE_EXIT_S = 120.0
#: How long the spawner waits for its server to exit once the server's end of the socket is closed, seconds; past
#: it the server (which takes no spawn and reports nothing now) is killed, so that no zombie stays.
REAP_WAIT_S = 10.0
#: What the server imports before it forks anything: the cost every child then skips.
PRELOAD = ("torch", "warmserve.engine", "warmserve.worker.core", "warmserve.worker.server", "warmserve.worker.main",
           "warmserve.cli")

_fresh = contextvars.ContextVar("warmserve_fresh_interpreters", default=False)


@contextlib.contextmanager
def fresh_interpreters():
    """Within it, ``popen_worker`` starts fresh interpreters, never forks (a vanilla autoscaler's engine start)."""
    token = _fresh.set(True)
    try:
        yield
    finally:
        _fresh.reset(token)


# ---------------------------------------------------------------------------------------------- the server side


def main() -> None:
    """The fork server's process: preload, then fork a child per request until its spawner's process is gone."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    spawner_pid = int(sys.argv[2])
    for name in PRELOAD:
        __import__(name)
    # Found in review: a launcher that ignored SIGCHLD (inherited across exec) had the kernel reap every child as it
    # exited, so the server's waitpid raised ECHILD at the first worker's exit and the server died, and with it
    # every worker it had forked. Set after the imports, in case one of them changed it.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Found in review: systemd's stop (KillMode=control-group) or `pkill -f warmserve` signals every process of the
    # server at once, and this one died on the spot: its children, which watch it (--exit-with-parent), aborted
    # what they ran, and every request in flight was answered 503 within 0.4 s instead of drained. Its life is its
    # spawner's (a pidfd, below); the controller stops it and its children. Its children get the dispositions back.
    _inherited.update((s, signal.signal(s, signal.SIG_IGN)) for s in STOP_SIGNALS)
    # Closed on the way out (a forked child's _serve closed it already): found in review under PYTHONDEVMODE, each
    # server's exit wrote "ResourceWarning: unclosed <socket.socket ...>" to the controller's stderr.
    with sock:
        child = _serve(sock, spawner_pid)
    if child is not None:  # in a forked child: run the worker here, at the top of the stack (no server frames)
        from warmserve.cli import exit_process

        exit_process(_run_child(*child))


def _serve(sock: socket.socket, spawner_pid: int):
    """Answer requests until the spawner is gone or idle (returns None) or, in a forked child, return (request,
    fds). The spawner's end is watched by EOF and its process by a pidfd: found in review, a process the spawner
    had forked (multiprocessing's fork) held the socket open, and the workers outlived a SIGKILLed controller."""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    try:
        spawner = os.pidfd_open(spawner_pid)
    except OSError:  # gone already (or no pidfds: the spawner checked they work before starting this)
        return None
    if os.getppid() != spawner_pid:  # went between the start and the pidfd: that pid may be another's now
        return None
    sel.register(spawner, selectors.EVENT_READ)
    pidfds: dict[int, int] = {}  # pidfd -> pid
    sock.send(msgspec.msgpack.encode({"ready": os.getpid()}))
    while True:
        events = sel.select(None if pidfds else IDLE_EXIT_S)
        if not events and not pidfds:  # idle: a process that closed its clusters does not keep it (~0.3 GB)
            sock.send(msgspec.msgpack.encode({"idle_exit": os.getpid()}))
            return None
        for key, _ in events:
            if key.fd == spawner:
                return None  # its children watch this process (exit-with-parent)
            if key.fileobj is not sock:
                pid = pidfds.pop(key.fd)
                sel.unregister(key.fd)
                os.close(key.fd)
                sock.send(msgspec.msgpack.encode({"exit": pid, "status": _reap(pid)}))
                continue
            msg, fds, _, _ = socket.recv_fds(sock, MESSAGE_MAX_BYTES, 2)
            if not msg:
                return None
            req = msgspec.msgpack.decode(msg)
            try:
                pid = os.fork()
            except OSError as e:
                for fd in fds:
                    os.close(fd)
                sock.send(msgspec.msgpack.encode({"id": req["id"], "error": f"fork failed: {e}"}))
                continue
            if pid == 0:
                # The child drops every descriptor of the server's: closed through their owners, so that no
                # Python object is left to close a number the worker reuses later.
                sel.close()
                for fd in (*pidfds, spawner):
                    os.close(fd)
                sock.close()
                return req, fds
            for fd in fds:
                os.close(fd)
            try:
                pidfd = os.pidfd_open(pid)
            except OSError as e:  # not expected (pidfds worked above): no child the server cannot report on
                os.kill(pid, signal.SIGKILL)
                _reap(pid)
                sock.send(msgspec.msgpack.encode({"id": req["id"], "error": f"pidfd_open failed: {e}"}))
                continue
            pidfds[pidfd] = pid
            sel.register(pidfd, selectors.EVENT_READ)
            # The pidfd goes along: the spawner signals that very process, never a pid reused after a reap.
            socket.send_fds(sock, [msgspec.msgpack.encode({"id": req["id"], "pid": pid})], [pidfd])


def _reap(pid: int) -> int:
    """The exit status of the server's ended child ``pid``, reaped here; ``STATUS_UNKNOWN`` when something else
    reaped it first (ECHILD), which is reported rather than ending the server and its other children."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return STATUS_UNKNOWN
    return os.waitstatus_to_exitcode(status)


def _run_child(req: dict, fds: list[int]) -> int:
    for sig, handler in _inherited.items():
        signal.signal(sig, handler)
    os.setsid()  # as start_new_session: a Ctrl-C at the terminal reaches the controller, which stops its workers
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in {null, *fds} - {0, 1, 2}:
        os.close(fd)
    # In ps and top, the command line a fresh worker would show, not the server's; before the environment changes,
    # since setproctitle finds the space it writes into by the environment the process started with.
    with contextlib.suppress(ImportError):
        import setproctitle

        setproctitle.setproctitle(shlex.join([sys.executable, "-m", "warmserve", *map(os.fsdecode, req["argv"])]))
    # Bytes, as the spawner's: a value that is not UTF-8 (a Latin-1 path) is passed as it is (final review).
    os.environb.clear()
    os.environb.update(req["env"])
    os.chdir(req["cwd"])
    # State the imports seeded from the OS, which a fresh interpreter would seed anew: no two workers share it.
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    argv = [os.fsdecode(a) for a in req["argv"]]
    sys.argv = ["warmserve", *argv]
    from warmserve.cli import main as cli_main

    return cli_main(argv)


# --------------------------------------------------------------------------------------------- the spawner side


class ForkedProcess:
    """A child of the fork server, with the part of ``subprocess.Popen`` the controller uses for local workers
    (pid, returncode, poll, wait, send_signal, terminate, kill). ``pidfd``: the server's pidfd of it, passed along
    with its pid (owned here)."""

    def __init__(self, server: ForkServer, pid: int, pidfd: int):
        self.args: list[str] = []
        self.pid = pid
        self.returncode: int | None = None
        #: Why its status says nothing, where it does not (Popen has no such field; the controller reads it with
        #: getattr, as it does a Ray worker's).
        self.exit_reason = ""
        self._server = server
        self._pidfd = pidfd
        # Closed once the process is known to have ended (``ended``), else when this object goes
        self._close_pidfd = weakref.finalize(self, os.close, pidfd)

    def ended(self, returncode: int) -> None:
        """The process ended with ``returncode``: its pidfd is closed now, not when this object goes (found in
        review: the controller kept one per worker lost or drained, 33 after a soak of 33 faults). Called with
        the server's ``changed`` held, as every use of the pidfd is."""
        self.returncode = returncode
        self._close_pidfd()

    def poll(self) -> int | None:
        with self._server.changed:
            # The server reports the status; once it is gone, the pidfd says the process ended, not how.
            if self.returncode is None and self._server.gone and self._ended():
                self.exit_reason = "its fork server ended first (killed, or out of memory), so its own status is lost"
                self.ended(STATUS_UNKNOWN)
            return self.returncode

    def _ended(self) -> bool:
        # poll, not select: found in review, select refused a pidfd numbered past 1,023 (a controller with many
        # client connections open), and every heartbeat's poll of a worker raised once its server was gone.
        p = select.poll()
        p.register(self._pidfd, select.POLLIN)
        return bool(p.poll(0))

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._server.changed:
            while self.poll() is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                # In steps: once the server is gone nothing notifies, and the pidfd is polled instead.
                self._server.changed.wait(0.1 if left is None else min(0.1, left))
            return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._server.changed:  # the pidfd stays open meanwhile (``ended`` closes it under this lock)
            if self.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # it ended since: as Popen, no error
                    signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __repr__(self) -> str:
        return f"<ForkedProcess pid {self.pid} returncode {self.returncode}>"


class ForkServer:
    """The spawner's end: starts the server process and forks children through it (thread-safe)."""

    def __init__(self, env: dict[str, str]):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from warmserve.worker.forkserver import main; main()", str(theirs.fileno()),
                 str(os.getpid())], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                env=env, start_new_session=True)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self._sock = mine
        self.changed = threading.Condition()  # guards everything below, and is notified on each change
        self.ready = False
        self.gone = False
        self.idle_exit = False
        self.retired = False
        self._abandoned: set[int] = set()
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._send_lock = threading.Lock()
        threading.Thread(target=self._read, name="warmserve-forkserver", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                msg, fds, _, _ = socket.recv_fds(self._sock, MESSAGE_MAX_BYTES, 1)
                if not msg:
                    break
                m = msgspec.msgpack.decode(msg)
                with self.changed:
                    if "ready" in m:
                        self.ready = True
                    elif "idle_exit" in m:
                        self.idle_exit = True
                    elif "exit" in m:
                        child = self._children.pop(m["exit"], None)
                        if child is not None:
                            child.ended(m["status"])
                    else:
                        if "pid" in m:  # made here, before the child's exit message can be read
                            self._children[m["pid"]] = m["child"] = ForkedProcess(self, m["pid"], fds[0])
                            if m["id"] in self._abandoned:
                                m["child"].kill()
                        if m["id"] not in self._abandoned:
                            self._replies[m["id"]] = m
                    self.changed.notify_all()
        except OSError:
            pass
        finally:
            # No message can pass now: the descriptor goes with the server, not when this object is collected
            # (found in review: one leaked per server gone idle, a ResourceWarning under PYTHONDEVMODE).
            with self._send_lock:
                self._sock.close()
            with self.changed:
                self.gone = True
                self.changed.notify_all()
            self._reap()

    def _reap(self) -> None:
        """Wait for the server, whose end of the socket is closed: it exits (idle, killed, or its spawner gone).
        Found in review: nothing waited for it, and each server that went stayed a zombie for the process's life.
        After ``gone`` is set, so that a spawn meanwhile starts a new server instead of waiting on this one."""
        try:
            self.proc.wait(REAP_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("the worker fork server (pid %d) closed its socket but did not exit within %g s; killing it",
                        self.proc.pid, REAP_WAIT_S)
            self.proc.kill()
            self.proc.wait()

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the server is ready (its imports done), waiting up to ``timeout_s``."""
        with self.changed:
            return self.changed.wait_for(lambda: self.ready or self.gone, timeout_s) and not self.gone

    def spawn(self, argv: list[str], *, env: dict[str, str], stdout: int, stderr: int) -> ForkedProcess:
        """Fork a child running ``warmserve *argv`` (the server ready); ``stdout``/``stderr``: descriptors it gets
        (duplicated)."""
        with self.changed:
            rid = self._next_id = self._next_id + 1
        req = msgspec.msgpack.encode({"id": rid, "argv": [os.fsencode(a) for a in argv], "cwd": os.getcwdb(),
                                      "env": {os.fsencode(k): os.fsencode(v) for k, v in env.items()}})
        with self._send_lock:
            socket.send_fds(self._sock, [req], [stdout, stderr])
        with self.changed:
            answered = self.changed.wait_for(lambda: rid in self._replies or self.gone, SPAWN_REPLY_TIMEOUT_S)
            reply = self._replies.pop(rid, None)
        if not answered:
            # Not stopped: its other children, healthy workers, watch it and would end with it (final review). It
            # takes no new spawn (shared_server starts another), and a child it forks for this request late is
            # killed on arrival (``_read``), since a fresh interpreter takes its place.
            with self.changed:
                self.retired = True
                self._abandoned.add(rid)
            raise errors.WorkerLostError(f"the worker fork server (pid {self.proc.pid}) did not answer a spawn "
                                         f"within {SPAWN_REPLY_TIMEOUT_S:g} s; the next spawns use a new one")
        if reply is None or "error" in reply:
            raise errors.WorkerLostError(f"the worker fork server (pid {self.proc.pid}) could not start a worker: "
                                         f"{reply['error'] if reply else 'it exited'}")
        child = reply["child"]
        child.args = ["warmserve", *argv]
        return child


_server: ForkServer | None = None
_server_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def forking_works() -> bool:
    """Whether this kernel gives pidfds (Linux >= 5.3, and no seccomp profile refusing them): without them a child
    could not be followed safely, so workers start as fresh interpreters (found in review: ENOSYS crashed the
    server after each fork and left its child running)."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError as e:
        log.warning("pidfd_open is refused here (%s): CPU workers start as fresh interpreters", e)
        return False
    return True


def _forget_after_fork() -> None:
    """In a child forked from this process (multiprocessing's fork, a pre-forking server): not its fork server.
    Found in review: such a child held the socket open, and the server never saw its spawner go."""
    global _server
    if _server is not None:
        with contextlib.suppress(OSError):
            _server._sock.close()
    _server = None


os.register_at_fork(after_in_child=_forget_after_fork)


def shared_server() -> ForkServer:
    """This process's fork server, started (not waited for) on first use and again once it has gone."""
    global _server
    with _server_lock:
        if _server is None or _server.gone or _server.retired or _server.proc.poll() is not None:
            env = dict(os.environ)
            env["CUDA_VISIBLE_DEVICES"] = ""  # its children are CPU workers; nothing here touches a GPU
            # Its own thread pools sized 1: each child sets torch's (prewarm_engine's set_num_threads); numpy's
            # BLAS stays at 1 in the children, which run no numpy math on a request's path.
            env["OMP_NUM_THREADS"] = "1"
            _server = ForkServer(env)
        return _server


def prepare(timeout_s: float) -> bool:
    """Start this process's fork server and wait until it is ready: for a caller that may wait (off the event loop,
    before starting workers); a spawn itself never waits for the server's imports."""
    return forking_works() and shared_server().wait_ready(timeout_s)


def popen_worker(cmd: list[str], *, env: dict[str, str], stdout, stderr, forked: bool):
    """Start ``cmd`` (``[python, -m, warmserve, worker, ...]``) as a worker process in a session of its own: forked
    from ``shared_server()`` when ``forked``, not within ``fresh_interpreters`` and that server is ready; else a
    fresh Popen (and the server, if wanted, starts meanwhile for the next spawn). Returns in milliseconds: found in
    review, waiting for a new server's imports here held the controller's event loop for 3 s.
    ``stdout``/``stderr`` as Popen's (a file object, DEVNULL, or None: this process's own)."""
    if forked and not _fresh.get() and forking_works():
        server = shared_server()
        if server.ready and not server.gone:
            try:
                return _fork(server, cmd, env=env, stdout=stdout, stderr=stderr)
            except Exception as e:  # whatever it was (found in review: an encoding error), the worker still starts
                (log.info if server.idle_exit else log.warning)(
                    "could not fork a worker (%s); starting a fresh interpreter", e)
    return subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def _fork(server: ForkServer, cmd: list[str], *, env: dict[str, str], stdout, stderr) -> ForkedProcess:
    assert cmd[1:3] == ["-m", "warmserve"], cmd
    argv = list(cmd[3:])
    # The child's parent is the server, not this process: it watches the server, which ends with this process.
    if "--exit-with-parent" in argv:
        at = argv.index("--exit-with-parent") + 1
        # nargs="?": the flag may come bare (the parent then is whatever started it); found in review, a bare flag
        # last raised IndexError here (so a fresh interpreter started), one before another flag overwrote that flag
        given = at < len(argv) and not argv[at].startswith("-")
        argv[at:at + given] = [str(server.proc.pid)]
    with contextlib.ExitStack() as stack:
        fds = []
        for stream, own in ((stdout, 1), (stderr, 2)):
            if stream is None:
                fds.append(own)
            elif stream == subprocess.DEVNULL:
                fds.append(stack.enter_context(open(os.devnull, "wb")).fileno())
            else:
                fds.append(stream.fileno())
        return server.spawn(argv, env=env, stdout=fds[0], stderr=fds[1])
