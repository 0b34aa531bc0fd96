"""Who can reach a ZeroMQ endpoint we bind, and the rule that follows.

A socket bound to a loopback address (or an ``ipc://``/``inproc://`` one) is reachable from this host only. Any
other address (``*``, ``0.0.0.0``, a host's address, an interface name, other transports) is reachable from the
network, and whoever connects can give orders (a worker's Prewarm/Evict/Shutdown; a controller's worker socket
admits any process as a worker). Such a bind needs CURVE, which authenticates peers by key, unless the operator
says ``--insecure``, and is then warned.
"""

from __future__ import annotations

import ipaddress
import logging

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


def curve_server(ctx, sock, public: bytes, secret: bytes, clients_dir: str):
    """Make ``sock`` a CURVE server with the key pair (``public``, ``secret``) that lets in only clients whose
    public certificates are in ``clients_dir``. ZAP requests are answered by an authenticator thread of ``ctx``,
    returned started: the caller stops it when the socket closes."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    try:
        auth.configure_curve(domain="*", location=clients_dir)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
    except BaseException:
        auth.stop()  # the caller never gets it to stop: its thread would outlive the socket
        raise
    return auth
