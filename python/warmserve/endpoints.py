"""What a ZeroMQ socket needs for the address it binds or connects to, beyond the address itself (no imports
beyond the standard library: clients and workers use it before anything heavy is loaded)."""

from __future__ import annotations

import os


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
