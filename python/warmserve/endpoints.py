"""What a ZeroMQ socket needs for the address it binds or connects to, and the check of the address itself (no
imports beyond the standard library and errors: clients and workers use it before anything heavy is loaded, and
config.py, which loads the policy, re-exports ``check_endpoint``)."""

from __future__ import annotations

import os

from warmserve.errors import InvalidArgumentError


def is_ipv6_endpoint(endpoint: str) -> bool:
    """A tcp:// address whose host is an IPv6 literal (``tcp://[::1]:5555``): its socket needs ZMQ_IPV6, which
    ZeroMQ leaves off (found in review: every IPv6 bind failed with "No such device")."""
    return isinstance(endpoint, str) and endpoint.startswith("tcp://[")


def ipc_socket_path(endpoint: str) -> str | None:
    """The file an ``ipc://`` address binds (None for any other, and for an abstract ``ipc://@name``): ZeroMQ leaves
    it behind when the socket closes."""
    if not isinstance(endpoint, str) or not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    return endpoint[len("ipc://"):]


def remove_ipc_file(endpoint: str | None) -> None:
    """Remove the file of the ``ipc://`` address a socket was bound to, once that socket is closed (nothing for
    any other address, or a file gone already). Only for an address bound here: one connected to is its binder's."""
    path = ipc_socket_path(endpoint) if endpoint else None
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def check_ipc_free(endpoint: str, what: str) -> None:
    """InvalidArgumentError when a process listens on the file of the ``ipc://`` address ``endpoint`` (nothing for
    any other address): ZeroMQ's bind removes that file and binds anew, unsaid. Found in review (two deployments of
    one machine given one --bind ipc:// path): the second took the address, the first one's restarted worker joined
    the second controller, and the second's close removed the file, so no restart could reach the first again. A
    file nobody listens on (left by a binder killed with SIGKILL) is replaced, as before."""
    import socket

    path = ipc_socket_path(endpoint)
    if not path:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(path)
    except OSError:  # no file, a stale one (ECONNREFUSED), not a socket: the bind goes on (and says what fails)
        return
    finally:
        probe.close()
    raise InvalidArgumentError(f"{what} {endpoint!r}: a process already listens on {path} (another warmserve's "
                               "controller or worker?), and binding it would take the address from that process. "
                               "Fix: another path for this one (ipc://...), or stop that process", endpoint=endpoint,
                               path=path)


def check_endpoint(endpoint, what: str, *, listen: bool, inproc_ok: bool = True) -> None:
    """A ZeroMQ address ``tcp://HOST:PORT`` (or ipc://, inproc://), checked before any socket is made: ZeroMQ
    answers "Invalid argument" naming no flag, and takes a port beyond 65535 modulo 65536 (found in review:
    tcp://127.0.0.1:99999 bound port 34463). ``listen``: a bind, where port 0 or * picks a free one.
    ``inproc_ok`` False: where the peers are other processes, which an inproc:// address never reaches (found in
    review: a controller bound to one waited out its whole start timeout for workers that could not connect)."""
    fix = "e.g. tcp://127.0.0.1:5555" + (" (port 0: a free one)" if listen else "")
    if not isinstance(endpoint, str):
        raise InvalidArgumentError(f"{what} must be a ZeroMQ address like tcp://HOST:PORT, got {endpoint!r}; {fix}")
    scheme, sep, rest = endpoint.partition("://")
    if sep and scheme == "inproc" and not inproc_ok:
        raise InvalidArgumentError(f"{what} {endpoint!r}: an inproc:// address reaches only this process, and the "
                                   f"workers are other processes; {fix}", endpoint=endpoint)
    if sep and scheme in ("ipc", "inproc") and rest:
        return
    if scheme == "tcp" and not listen and ";" in rest:
        # ZeroMQ's connect form with a source address, tcp://SRC:PORT;HOST:PORT (port 0: any): the destination is
        # checked as any address is (found in review: the IPv6 check read "127.0.0.1:0;127.0.0.1" as one host)
        source, _, rest = rest.partition(";")
        src_host, _, _ = source.rpartition(":")
        if ":" in src_host and "[" not in src_host:
            raise InvalidArgumentError(f"{what}: the source address of {endpoint!r} is IPv6 without brackets; write "
                                       f"it in brackets: [{src_host}]", endpoint=endpoint)
    host, colon, port = rest.rpartition(":")
    if scheme != "tcp" or not sep or not colon or not host:
        raise InvalidArgumentError(f"{what} must be a ZeroMQ address like tcp://HOST:PORT, got {endpoint!r}; {fix}",
                                   endpoint=endpoint)
    if ":" in host and "[" not in host:
        # ZeroMQ turns IPv6 on for a socket only when told (endpoints.is_ipv6_endpoint, which knows the bracketed
        # form): found in review, tcp://::1:PORT passed here, then the bind failed with a fix that did not fit, and
        # a worker connecting to it waited out its timeout.
        raise InvalidArgumentError(f"{what}: {endpoint!r} has an IPv6 address without brackets; write it in "
                                   f"brackets: tcp://[{host}]:{port}", endpoint=endpoint)
    if listen and port == "*":
        return
    low = 0 if listen else 1
    if not port.isdigit() or not low <= int(port) <= 65535:
        raise InvalidArgumentError(f"{what}: port {port!r} of {endpoint!r} must be a number in {low}-65535; {fix}",
                                   endpoint=endpoint)
    if not listen and host == "*":
        raise InvalidArgumentError(f"{what}: {endpoint!r} names no host to connect to; {fix}", endpoint=endpoint)
