"""An IPv6 address written without brackets (``tcp://::1:5555``) handed straight to a worker client or to the
controller's worker socket (found in review): the sync client took it and connected nowhere, its first call
waiting out its timeout; the async one the same at its first call; the hub's bind failed with "No such device" and
a fix (``tcp://127.0.0.1:PORT``) that did not fit. Each now refuses it as ``config.check_endpoint`` does (the
config and the CLI flags): an InvalidArgumentError naming the bracketed form, before any socket is made."""

from __future__ import annotations

import pytest

from warmserve.controller.workers import WorkerHub
from warmserve.errors import InvalidArgumentError
from warmserve.worker import AsyncWorkerClient, WorkerClient


def _client(endpoint):
    WorkerClient(endpoint).close()


def _async_client(endpoint):
    AsyncWorkerClient(endpoint)  # no socket until its first call


def _hub(bind):
    WorkerHub(bind, on_hello=None, on_event=None, on_lost=None).close()


@pytest.mark.parametrize("make, endpoint, fixed", [
    (_client, "tcp://::1:5555", "tcp://[::1]:5555"),
    (_client, "tcp://fe80::1%lo:7000", "tcp://[fe80::1%lo]:7000"),
    (_async_client, "tcp://::1:5555", "tcp://[::1]:5555"),
    (_hub, "tcp://::1:0", "tcp://[::1]:0"),
], ids=["client", "client-scoped", "async-client", "hub"])
def test_an_unbracketed_ipv6_address_is_refused_naming_the_bracketed_form(make, endpoint, fixed):
    with pytest.raises(InvalidArgumentError, match="without brackets") as e:
        make(endpoint)
    assert fixed in str(e.value) and e.value.endpoint == endpoint


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555",
                                      "ipc:///tmp/warmserve-none.sock", "inproc://w"])
def test_the_addresses_a_client_took_before_are_still_taken(endpoint):
    """Nothing listens there: a client connects lazily, so making and closing it is all that is checked."""
    _client(endpoint)
    _async_client(endpoint)


def test_zeromqs_source_address_form_is_taken_by_a_client():
    """``tcp://SRC:PORT;HOST:PORT`` (ZeroMQ binds the source, then connects): taken by both clients, its destination
    checked as any address (found in review: refused as an IPv6 address without brackets, with a nonsense fix)."""
    for client in (WorkerClient, AsyncWorkerClient):
        client("tcp://127.0.0.1:0;127.0.0.1:5555")
        client("tcp://[::1]:0;[::1]:5555")
        with pytest.raises(InvalidArgumentError, match=r"write it in brackets: tcp://\[::1\]:5555"):
            client("tcp://127.0.0.1:0;::1:5555")
        with pytest.raises(InvalidArgumentError, match="source address .* IPv6 without brackets"):
            client("tcp://::1:0;[::1]:5555")
