"""A free TCP port for tests that must name an address before anything binds it (a controller's --bind its workers
are told, a worker restarted on the same endpoint, a torch.distributed rendezvous). Importable from every test
directory: tests/conftest.py puts this directory on sys.path, as it does for any conftest."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port free at the time of the call (the OS's pick for port 0); another process may take it before
    the caller binds it, which these tests accept."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
