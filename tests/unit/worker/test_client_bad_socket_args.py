"""A client whose socket cannot be set up (CURVE arguments that do not fit, an endpoint ZeroMQ refuses) raises
and leaves no socket open: the half-made socket used to reach the garbage collector unclosed, and its
ResourceWarning surfaced in whatever test ran then (seen in a full run, in a test that uses no socket)."""

import asyncio
import gc
import warnings

import pytest
import zmq

from warmserve.errors import InvalidArgumentError
from warmserve.worker.async_client import AsyncWorkerClient
from warmserve.worker.client import WorkerClient

BAD = [
    ({"endpoint": "tcp://127.0.0.1:1", "curve_server_key": "worker.key"}, InvalidArgumentError),
    ({"endpoint": "tcp://127.0.0.1:1", "curve_secret_key": "client.key_secret"}, InvalidArgumentError),
    # past the clients' check of the address (endpoints.check_endpoint), refused by ZeroMQ's connect
    ({"endpoint": "tcp://bad host:5555"}, zmq.ZMQError),
]


def _unclosed(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ResourceWarning) and "socket" in str(w.message)]


@pytest.mark.parametrize("kwargs, error", BAD)
def test_the_sync_client_closes_a_socket_it_could_not_set_up(kwargs, error):
    gc.collect()  # what earlier tests in this process left is theirs, not this test's
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(error):
            WorkerClient(**kwargs)
        gc.collect()
    assert _unclosed(record) == []


@pytest.mark.parametrize("kwargs, error", BAD)
def test_the_async_client_closes_a_socket_it_could_not_set_up_and_can_be_closed(kwargs, error):
    async def go():
        c = AsyncWorkerClient(**kwargs)
        with pytest.raises(error):
            await c._ensure()
        assert c._sock is None  # a later call tries again from nothing
        await c.close()

    gc.collect()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        asyncio.run(go())
        gc.collect()
    assert _unclosed(record) == []


def test_an_endpoint_that_is_no_zeromq_address_is_refused_before_any_socket():
    gc.collect()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for client in (WorkerClient, AsyncWorkerClient):
            with pytest.raises(InvalidArgumentError, match="must be a ZeroMQ address like tcp://HOST:PORT"):
                client("nonsense://x")
        gc.collect()
    assert _unclosed(record) == []
