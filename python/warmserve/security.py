"""Who can reach a ZeroMQ endpoint we bind, and the rule that follows.

A socket bound to a loopback address (or an ``ipc://``/``inproc://`` one) is reachable from this host only. Any
other address (``*``, ``0.0.0.0``, a host's address, an interface name, other transports) is reachable from the
network, and whoever connects can give orders (a worker's Prewarm/Evict/Shutdown; a controller's worker socket
admits any process as a worker). Such a bind needs CURVE, which authenticates peers by key, unless the operator
says ``--insecure``, and is then warned.
"""

from __future__ import annotations

import glob
import ipaddress
import logging
import os
import weakref

import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from warmserve.errors import InvalidArgumentError, register

log = logging.getLogger("warmserve.security")

#: Transports that never leave the host.
LOCAL_TRANSPORTS = ("ipc://", "inproc://")


@register
class InsecureBindError(InvalidArgumentError):
    """A non-loopback endpoint would be bound with no authentication of its peers."""


def is_loopback(endpoint: str) -> bool:
    """True when only processes on this host can connect to ``endpoint`` (a ZeroMQ bind address)."""
    if endpoint.startswith(LOCAL_TRANSPORTS):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: reachable from elsewhere, as far as we can tell
        return False


def require_authenticated_bind(endpoint: str, *, authenticated: bool, insecure: bool, who: str, fix: str,
                               loopback: str = "bind a loopback address (tcp://127.0.0.1:PORT)",
                               trust: str = "pass --insecure") -> None:
    """Refuse to bind ``endpoint`` for ``who`` when it is reachable from other hosts and peers are not
    authenticated (``authenticated``: CURVE keys given), unless ``insecure``; then warn. ``fix`` says which
    options turn authentication on, ``loopback`` and ``trust`` how to bind locally or go without it, in the
    caller's terms (a command line's flags, or the Python API's arguments)."""
    if authenticated or is_loopback(endpoint):
        return
    if insecure:
        log.warning("%s listens on %s with no authentication (--insecure): any host that can reach it can send "
                    "it orders", who, endpoint)
        return
    raise InsecureBindError(
        f"{who} would listen on {endpoint}, reachable from other hosts, with no authentication: anyone who can "
        f"connect could send it orders. To authenticate peers, {fix}; or {loopback}; or {trust} on a network you "
        f"trust",
        endpoint=endpoint,
    )


#: Refused keys the controller names in its log, at most (each once): past this, an attacker cycling keys would
#: grow the set, and the log, without end.
_MAX_REFUSED_KEYS_LOGGED = 256
#: Words in the reason of a ``Refused`` sent for a message under a worker id that joined with another CURVE key
#: (``controller/workers.py``): the worker logs that one at ERROR (``worker/link.py``).
KEY_CLASH_MARK = "joined with CURVE key"


def load_curve_key(path: str, *, secret: bool, what: str) -> tuple[bytes, bytes | None]:
    """``(public, secret)`` of the CURVE certificate at ``path`` (``secret``: it must hold the secret key too), or an
    InvalidArgumentError naming ``what`` (the flag or role of the file) and ``path``. pyzmq's own loader raises a
    bare ValueError or OSError, returns no secret key from a public certificate (found in review: serve crashed on
    it with "TypeError: expected bytes, got: None") and passes a key of the wrong length on. A secret key other
    users can read is used, with a warning."""
    make = "make certificates with `python -c \"import zmq.auth; zmq.auth.create_certificates('DIR', 'NAME')\"`"
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"{what} {path} is not a CURVE certificate ({e}): {make}", path=path) from None
    if secret and secret_key is None:
        raise InvalidArgumentError(f"{what} {path} holds a public key only: give the .key_secret file of the pair "
                                   f"(the .key file is its public half)", path=path)
    for key in (public, secret_key) if secret else (public,):
        try:
            ok = len(key) == 40 and len(z85.decode(key)) == 32
        except Exception:  # z85 rejects a character outside its alphabet with whatever the lookup raises
            ok = False
        if not ok:
            raise InvalidArgumentError(f"{what} {path} holds a malformed key (not 40 Z85 characters): {make}",
                                       path=path)
    if secret:
        warn_if_readable(path, what)
    return public, secret_key


def warn_if_readable(path: str, what: str) -> None:
    """Warn when users other than the owner may read the secret key at ``path``: whoever reads it can pose as its
    owner. zmq.auth.create_certificates writes with the process's umask (0644 under the usual 022)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o044:
        log.warning("%s %s holds a secret key that other users can read (mode %03o): `chmod 600 %s`", what, path,
                    mode & 0o777, path)


def load_public_keys(directory: str, what: str) -> dict[bytes, bool]:
    """The public keys of the ``*.key`` certificates in ``directory``, in the form the ZAP authenticator keeps
    them; a file that is no certificate is an InvalidArgumentError naming it. Found in review: pyzmq's
    configure_curve swallowed one malformed file's error (its log named the directory) and let in no key at all."""
    return {load_curve_key(f, secret=False, what=what)[0]: True
            for f in sorted(glob.glob(os.path.join(glob.escape(directory), "*.key")))}


def curve_server(ctx, sock, public: bytes, secret: bytes, clients_dir: str | None, extra_keys=(),
                 what: str = "CURVE client certificate"):
    """Make ``sock`` a CURVE server with the key pair (``public``, ``secret``) that lets in only clients whose
    public certificates are in ``clients_dir`` (read now: a key put there later is not let in), and the public keys
    ``extra_keys``; ``what``: how an error names a file of ``clients_dir``. ZAP requests are answered by an
    authenticator thread of ``ctx``, returned started: the caller stops it when the socket closes. It logs each
    key it refuses, once, at WARNING."""
    keys = load_public_keys(clients_dir, what) if clients_dir else {}
    keys.update((k, True) for k in extra_keys)
    auth = _Authenticator(ctx, clients_dir or "no directory")
    auth.start()
    try:
        auth.certs["*"] = keys  # what configure_curve stores, without its swallowing of a bad file
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
    except BaseException:
        auth.stop()  # the caller never gets it to stop: its thread would outlive the socket
        raise
    return auth


class _Authenticator(ThreadAuthenticator):
    """pyzmq's authenticator, which logs refusals at DEBUG only: a worker with a key not listed was refused without
    a word on the controller's side (found in review). This one says so once per key, naming the peer's address and
    where the keys allowed come from."""

    def __init__(self, ctx, where: str):
        super().__init__(ctx)
        self.where = where
        self.refused: set[bytes] = set()
        self.address = ""

    async def handle_zap_message(self, msg):
        self.address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain, client_key):
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed and client_key not in self.refused and len(self.refused) < _MAX_REFUSED_KEYS_LOGGED:
            self.refused.add(client_key)
            log.warning("refused a CURVE peer at %s: its public key %s is not among the keys allowed (%s); to let "
                        "it in, put its .key file there and restart", self.address,
                        z85.encode(client_key).decode("ascii"), self.where)
        return allowed, reason


#: Worker sockets given a throwaway key pair by ``curve_client`` (no --curve-secret-key): their refusal names no flag
#: that was not given (``uses_throwaway_key``).
_THROWAWAY = weakref.WeakSet()


def curve_client(sock, server_key: str, secret_key: str | None) -> None:
    """CURVE on a worker's socket towards a controller: its public certificate, and this worker's own secret one
    (whose public half the controller must list); without one, a throwaway key pair made now, with a WARNING: a
    controller with --curve-dir lets in only the keys of its DIR/workers/, and a key made now is in none (found in
    review: the worker was allowed to start this way, and its refusal named a --curve-secret-key never given)."""
    import zmq

    server_public, _ = load_curve_key(server_key, secret=False, what="--curve-server-key")
    if secret_key:
        public, secret = load_curve_key(secret_key, secret=True, what="--curve-secret-key")
    else:
        public, secret = zmq.curve_keypair()
        _THROWAWAY.add(sock)
        log.warning("--curve-server-key without --curve-secret-key: this worker uses a throwaway key pair made now "
                    "(public key %s), which a controller with --curve-dir refuses, as no DIR/workers/ can list it; "
                    "pass --curve-secret-key (a key pair whose public .key is in the controller's DIR/workers/)",
                    public.decode("ascii"))
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def uses_throwaway_key(sock) -> bool:
    """Whether ``curve_client`` gave ``sock`` a throwaway key pair (no --curve-secret-key)."""
    return sock in _THROWAWAY


def curve_bind_server(ctx, sock, secret_key: str | None, clients_dir: str):
    """CURVE on a bound worker: its secret certificate, and only clients whose public certificates sit in
    ``clients_dir`` are let in (ZAP, answered by an authenticator thread of this context)."""
    if not secret_key:
        raise InvalidArgumentError(
            "--curve-clients-dir needs --curve-secret-key (this worker's .key_secret certificate, made with "
            "zmq.auth.create_certificates)", clients_dir=clients_dir)
    if not os.path.isdir(clients_dir):
        raise InvalidArgumentError(f"--curve-clients-dir {clients_dir} is not a directory", clients_dir=clients_dir)
    public, secret = load_curve_key(secret_key, secret=True, what="--curve-secret-key")
    return curve_server(ctx, sock, public, secret, clients_dir, what="--curve-clients-dir certificate")

