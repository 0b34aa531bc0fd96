"""The controller's worker socket's CURVE set-up and its tear-down (``WorkerHub``'s, in ``workers.py``): module-level
functions holding no reference to the hub, so that a hub dropped without close() is still collected and cleaned up."""

from __future__ import annotations

import glob
import logging
import os
import time
from collections import Counter

import zmq

from warmserve.controller.pids import pid_running
from warmserve.endpoints import remove_ipc_file
from warmserve.errors import InvalidArgumentError
from warmserve import owned_dirs, protocol as P
from warmserve.security import KEY_CLASH_MARK, curve_server, load_curve_key

log = logging.getLogger("warmserve.controller")

#: Seconds between two log lines of one kind of failed handshake: a misconfigured worker tries again every 0.1-1 s
#: (ZeroMQ's reconnect back-off), for ever.
HANDSHAKE_LOG_EVERY_S = 60.0
#: Seconds between two log lines of messages refused under a worker id from a CURVE key not its own (``KeyClashes``):
#: the clashing process says Hello each heartbeat for as long as it runs.
KEY_CLASH_LOG_EVERY_S = 60.0


def release_curve(auth, curve_keys: LocalCurveKeys | None) -> None:
    if auth is not None:
        auth.stop()
    if curve_keys is not None:
        curve_keys.close()


def finalize_hub(sock, ctx, auth, curve_keys: LocalCurveKeys | None, bound: str, handshakes=None,
                 pid: int | None = None, private_dir: str | None = None) -> None:
    """A hub's close: the authenticator and the handshake monitor first, since ctx.term() waits for every socket of
    the context, theirs among them; then the folder of its private socket (``private_bind``). Nothing in a process
    forked from ``pid``, the hub's own: found in review, a child's exit (weakref's atexit hook) removed its parent's
    ipc:// socket file and CURVE key files."""
    if pid is not None and pid != os.getpid():
        return
    release_curve(auth, curve_keys)
    if handshakes is not None:
        handshakes.close()
    close_sock(sock, ctx, bound)
    if private_dir is not None:
        _rmtree(private_dir)


class LocalCurveKeys:
    """The certificates of the local workers a CURVE controller starts (the controller's public one, the workers'
    secret one), kept in memory and written to files in a temp dir of mode 0700 (the files 0600) whenever a worker is
    started (``paths``), since a local worker takes them as --curve-server-key/--curve-secret-key paths. Found in
    review: written once at the start, a temp cleaner's sweep of a long-running server's /tmp made every later restart
    of a local worker fail for ever. They are taken off the disk once each local worker started (``started``) has
    said Hello (``heard``), having read them, or has exited: a controller killed with SIGKILL leaves no secret key
    behind, unless it is killed while a local worker starts (found in review: left in $TMPDIR for good)."""

    SERVER, SECRET = "server.key", "local.key_secret"

    def __init__(self, server_public: bytes, local_secret: bytes, local_public: bytes):
        import threading

        self._contents = {self.SERVER: server_public, self.SECRET: local_secret}
        self._local_public = local_public.decode("ascii")  # Z85, as the authenticator's User-Id says it
        #: Pids of the local workers started that have not said Hello yet: each may still have to read the files.
        self._starting: set[int] = set()
        self._lock = threading.Lock()  # a starter may run off the event loop (restarts.py's threaded spawns)
        self._closed = False
        #: The temp dir the files are in now (None: none written, or dropped).
        self.dir: str | None = None
        sweep_dead_owners()

    def paths(self) -> tuple[str, str]:
        """(--curve-server-key, --curve-secret-key) paths, both files there now: written again, in a fresh temp dir,
        when either is gone (or was dropped)."""
        import tempfile

        with self._lock:
            if self._closed:  # written now, they would outlive the hub: nothing would remove them
                raise InvalidArgumentError("the controller's worker socket is closed: no local worker can be started "
                                           "with its CURVE keys; start the controller again", closed=True)
            if self.dir is not None and all(os.path.isfile(os.path.join(self.dir, n)) for n in self._contents):
                return self._files(self.dir)
            if self.dir is not None:
                log.warning("the local workers' CURVE key files in %s are gone (a temp cleaner?): written again in "
                            "a fresh temp dir", self.dir)
                self._remove()
            # mode 0700: the local workers' secret key is in it; named by this process, for ``sweep_dead_owners``
            tmp = tempfile.mkdtemp(prefix=owned_dirs.owned_prefix(CURVE_DIR_PREFIX))
            try:
                for name, data in self._contents.items():
                    # 0600 from the start: the local workers warn of a key others can read, and none ever can here
                    fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
            except BaseException:
                _rmtree(tmp)
                raise
            self.dir = tmp
            return self._files(tmp)

    def take(self) -> tuple[bytes, bytes]:
        """The (server public, local secret) certificates' contents, their files taken off the disk: for a launcher
        that hands them to its workers itself (the Ray actors, restarts too), so none waits on the files."""
        with self._lock:
            self._remove()
            return self._contents[self.SERVER], self._contents[self.SECRET]

    def started(self, pid: int) -> None:
        """A local worker was started with ``paths()``: the files stay until it said Hello (or is gone)."""
        with self._lock:
            self._starting.add(pid)

    def heard(self, key: str, pid: int) -> None:
        """A Hello under CURVE public key ``key`` (Z85) from process ``pid``: a local worker's means it read the files.
        Once no local worker started is still to say Hello (those that exited do not count), the files go."""
        if key != self._local_public:  # a remote worker's pid says nothing of the local ones
            return
        with self._lock:
            self._starting.discard(pid)
            self._starting = {p for p in self._starting if pid_running(p)}
            if not self._starting:
                self._remove()

    def drop_files(self) -> None:
        """Take the files off the disk now; ``paths`` writes them again."""
        with self._lock:
            self._remove()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._remove()

    def _files(self, tmp: str) -> tuple[str, str]:
        return os.path.join(tmp, self.SERVER), os.path.join(tmp, self.SECRET)

    def _remove(self) -> None:
        if self.dir is not None:
            _rmtree(self.dir)
            self.dir = None


#: The name of a ``LocalCurveKeys`` temp dir: this prefix, the pid namespace's inode, the owner's pid, "-", random.
CURVE_DIR_PREFIX = "warmserve-curve-"


def sweep_dead_owners(root: str | None = None) -> None:
    """Remove the ``LocalCurveKeys`` temp dirs under ``root`` ($TMPDIR) of this user whose owning process, in this
    pid namespace, has ended. Found in review: a controller killed with SIGKILL while a local worker started left its
    dir, the workers' secret key in it, and each such kill one more. A dir whose owner cannot be proven dead (another
    namespace's, an older unnamed one, a pid reused since) is left alone."""
    import tempfile

    owned_dirs.sweep_dead_owners(root or tempfile.gettempdir(), CURVE_DIR_PREFIX)


#: Name of the folders of the controllers' private worker sockets (``private_bind``), by owner (owned_dirs.py).
PRIVATE_DIR_PREFIX = "warmserve-workers-"
#: Longest ipc:// socket path ZeroMQ binds (a sockaddr_un holds 107 bytes and the NUL).
_IPC_PATH_MAX = 107


def private_bind() -> tuple[str, str]:
    """The worker socket of a controller left with the default bind (``ControllerConfig.bind`` ""): an ``ipc://``
    path in a fresh folder of mode 0700, so that only this user's processes on this machine (and root) can connect.
    Returns (endpoint, folder): the hub's close removes the folder (``finalize_hub``, never from a forked child), and
    a later start sweeps the folders of owners killed before theirs (owned_dirs.py). Found in review: the loopback
    TCP default let any user of the machine join as a worker and be sent requests' prompts. Under $TMPDIR, or /tmp
    where $TMPDIR's path is too long for a socket's or is not UTF-8."""
    import tempfile

    root = tempfile.gettempdir()
    # Bytes, not characters: a socket's path is counted in bytes (a $TMPDIR of 60 "ss-sharp"s is 120). A path that is
    # not UTF-8 cannot be the endpoint: ZeroMQ and the workers take it as UTF-8 text (found in the locale review: a
    # Latin-1 $TMPDIR stopped every start with a bare "UnicodeEncodeError: ... surrogates not allowed").
    try:
        fits = len(os.path.join(root, PRIVATE_DIR_PREFIX).encode("utf-8")) + 40 <= _IPC_PATH_MAX
    except UnicodeEncodeError:
        fits = False
    if not fits:
        root = "/tmp"
    owned_dirs.sweep_dead_owners(root, PRIVATE_DIR_PREFIX)
    folder = tempfile.mkdtemp(prefix=owned_dirs.owned_prefix(PRIVATE_DIR_PREFIX), dir=root)  # mode 0700
    return f"ipc://{os.path.join(folder, 'w')}", folder


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class HandshakeWatch:
    """Logs the handshakes the worker socket refused for a mismatch of settings, which neither side would otherwise
    say here: a worker with no CURVE keys at a controller with them (or the other way round), and one whose
    --curve-server-key is not this controller's public key (the worker logs these too, on its own host). A key
    not listed in DIR/workers is the authenticator's to log. Other failures (a TCP probe that connects and closes,
    a peer that is no ZeroMQ) are left unlogged: a health check of the port would fill the log. A mechanism mismatch
    shows here only when this side sees it first (which side does is a race); a refused server key always does.
    Read on the heartbeat round (``poll``); each kind is logged once, then at most every HANDSHAKE_LOG_EVERY_S with
    a count."""

    def __init__(self, sock, curve: bool):
        self.curve = curve
        self.monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        self.monitor.setsockopt(zmq.LINGER, 0)
        self._unsaid: Counter = Counter()  # kind -> failures since it was last logged
        self._said_s: dict[int, float] = {}  # kind -> when it was last logged (monotonic s)

    def poll(self, now_s: float | None = None) -> None:
        from zmq.utils.monitor import recv_monitor_message

        now_s = time.monotonic() if now_s is None else now_s
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            if event["value"] in (zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC):
                self._unsaid[event["value"]] += 1
        for kind, n in list(self._unsaid.items()):
            if now_s - self._said_s.get(kind, -HANDSHAKE_LOG_EVERY_S) >= HANDSHAKE_LOG_EVERY_S:
                self._said_s[kind] = now_s
                del self._unsaid[kind]
                log.error("%d worker connection(s) refused at the handshake: %s", n, self._why(kind))

    def _why(self, kind: int) -> str:
        if kind == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return ("a worker's --curve-server-key is not this controller's public key (the public half of "
                    "--curve-dir's server.key_secret)")
        if self.curve:
            return ("a worker without CURVE keys: start it with --curve-server-key (this controller's public key) "
                    "and --curve-secret-key (a key pair whose public half is in --curve-dir's workers/)")
        return ("a worker with CURVE keys (--curve-server-key) at this controller, which runs without CURVE: start "
                "the controller with --curve-dir, or the worker without those flags")

    def close(self) -> None:
        self.monitor.close(0)


class KeyClashes:
    """Messages refused under a worker id from a CURVE key other than the one it joined with (``WorkerHub._key_fits``):
    each (id, key) logged once, then at most every KEY_CLASH_LOG_EVERY_S with a count while the clash lasts, and each
    sender told, which logs it at ERROR (``worker/link.py``). Found in review: one WARNING, then nothing on either
    side while the real worker stayed shut out."""

    def __init__(self):
        self._said_s: dict[tuple[bytes, str], float] = {}  # (id, key) -> when last logged (monotonic s)
        self._unsaid: Counter = Counter()  # (id, key) -> messages refused since then

    def refuse(self, sock, ident: bytes, key: str, first: str, msg, now_s: float | None = None) -> None:
        now_s, pair = time.monotonic() if now_s is None else now_s, (ident, key)
        self._unsaid[pair] += 1
        if now_s - self._said_s.get(pair, -KEY_CLASH_LOG_EVERY_S) >= KEY_CLASH_LOG_EVERY_S:
            self._said_s[pair] = now_s
            log.warning("refused %s under worker id %r from CURVE key %s: that id joined with key %s (another worker "
                        "started with the same --worker-id, or one posing as it); %d message(s) refused since the last "
                        "such line; the worker of that id is shut out while that process runs", type(msg).__name__,
                        ident, key, first, self._unsaid.pop(pair))
        why = (f"refused worker id {ident.decode('utf-8', 'replace')!r} from CURVE key {key}: that id "
               f"{KEY_CLASH_MARK} {first}, another worker's. Start this one with its own --worker-id (a worker id is "
               f"bound to the key it first joined with until the controller restarts)")
        try:
            sock.send_multipart([ident, P.encode(P.Refused(reason=why))], zmq.NOBLOCK)
        except zmq.ZMQError:  # gone again: told at its next message
            pass


def close_sock(sock, ctx, bound: str | None = None) -> None:
    sock.close(0)
    ctx.term()
    remove_ipc_file(bound)  # ZeroMQ leaves an ipc:// socket's file behind (found in review)


def stale_server_key(curve_dir: str, public: bytes) -> str | None:
    """What is wrong with ``curve_dir``/server.key, the public key workers are given, when it is not ``public`` (the
    public half of server.key_secret); None when it is, or is missing (nothing stale to hand out). Found in review:
    a server.key left from another pair was not noticed, and the start-up hint told remote workers to use it."""
    path = os.path.join(curve_dir, "server.key")
    if not os.path.isfile(path):
        return None
    try:
        theirs, _ = load_curve_key(path, secret=False, what="--curve-dir's public server key")
    except InvalidArgumentError as e:
        return e.message
    if theirs == public:
        return None
    return (f"{path} holds public key {theirs.decode('ascii')}, not {public.decode('ascii')}, the public half of "
            f"{path}_secret beside it: a worker given it as --curve-server-key is refused. Write the right one "
            f"(`printf 'metadata\\ncurve\\n    public-key = \"%s\"\\n' '{public.decode('ascii')}' > {path}`) and give "
            f"workers that copy")


def no_worker_keys(curve_dir: str) -> str | None:
    """Why no remote worker can join a controller with ``curve_dir``: its workers/ folder is missing or holds no
    ``*.key``; None when it holds one at least. Found in review: the controller waited without a word for remote
    workers whose keys it never had."""
    workers = os.path.join(curve_dir, "workers")
    if not os.path.isdir(workers):
        state = "does not exist"
    elif not glob.glob(os.path.join(glob.escape(workers), "*.key")):
        state = "holds no *.key file"
    else:
        return None
    return (f"{workers} {state}: no remote worker can join this controller (only the local workers it starts have "
            f"a key); put each remote worker's public .key there and start the controller again (it reads them at "
            f"start)")


def remote_curve_hint(curve_dir: str, server_cert: str, remote_workers: int) -> str:
    """The CURVE flags of the start-up line that tells how to start ``remote_workers`` remote workers
    (``controller/launch.py``); ``server_cert``: the public certificate written from server.key_secret. Refuses to
    wait for workers that no key lets in (``no_worker_keys``), and names no stale DIR/server.key (found in review:
    the hint told workers to use one)."""
    if (problem := no_worker_keys(curve_dir)) is not None:
        raise InvalidArgumentError(f"{remote_workers} remote worker(s) expected, but {problem}", path=curve_dir,
                                   remote_workers=remote_workers)
    public, _ = load_curve_key(server_cert, secret=False, what="the controller's public key")
    server_key = os.path.join(curve_dir, "server.key")
    if not os.path.isfile(server_key) or stale_server_key(curve_dir, public) is not None:
        server_key = (f"SERVER.key (a copy of the public half of {server_key}_secret, public key "
                      f"{public.decode('ascii')}: not {server_key}, which is missing or stale)")
    return (f" --curve-server-key {server_key} --curve-secret-key WORKER.key_secret (its public WORKER.key in "
            f"{os.path.join(curve_dir, 'workers')}/)")


def curve_server_of(ctx, sock, curve_dir: str):
    """CURVE on the ROUTER: the controller's secret key from curve_dir/server.key_secret, and only workers whose
    public keys sit in curve_dir/workers/ (read now) are let in (ZAP), plus a key pair made now for the local workers
    this controller spawns. Returns (authenticator, ``LocalCurveKeys``): the local workers' secret cert and the
    server's public one, their files written. The public one is written from server.key_secret, not taken from
    curve_dir/server.key, which may be missing or left from an older pair (found in review: the local workers then
    failed the handshake, unwarned)."""
    secret = os.path.join(curve_dir, "server.key_secret")
    if not os.path.isfile(secret):  # typed, as a malformed one is (found in review: a bare FileNotFoundError)
        # A directory (or other non-file) there is named as such: found in review, it was reported "missing".
        state = "is missing" if not os.path.exists(secret) else "is not a file"
        raise InvalidArgumentError(
            f"CURVE is on but {secret} {state}: create keys with `python -c \"import zmq.auth; "
            f"zmq.auth.create_certificates('{curve_dir}', 'server')\"` and put workers' public keys in "
            f"{curve_dir}/workers", path=secret)
    public, secret_key = load_curve_key(secret, secret=True, what="--curve-dir's server key")
    for problem in (stale_server_key(curve_dir, public), no_worker_keys(curve_dir)):
        if problem is not None:
            log.warning("%s", problem)
    local_public, local_secret = zmq.curve_keypair()
    keys = LocalCurveKeys(_cert(public), _cert(local_public, local_secret), local_public)
    try:
        keys.paths()
        auth = curve_server(ctx, sock, public, secret_key, os.path.join(curve_dir, "workers"),
                            extra_keys=[local_public], what=f"worker certificate (--curve-dir {curve_dir}/workers)")
    except BaseException:
        keys.close()  # it holds a secret key made just now
        raise
    return auth, keys


def _cert(public: bytes, secret: bytes | None = None) -> bytes:
    """A certificate file's text as zmq.auth.load_certificate reads it (the secret key, when given, makes it a
    .key_secret)."""
    text = f'metadata\ncurve\n    public-key = "{public.decode("ascii")}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode("ascii")}"\n'
    return text.encode("ascii")
