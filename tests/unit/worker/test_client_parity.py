"""AsyncWorkerClient has every operation of WorkerClient, with the same parameters (its docstring promises it)."""

from __future__ import annotations

import inspect

from warmserve.worker import AsyncWorkerClient, WorkerClient

# Raw socket access for tests that send garbage: the async client's receiver task owns its socket's reads.
SYNC_ONLY = {"send_raw", "recv_raw"}


def _public_methods(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_") and name not in SYNC_ONLY}


def _shape(sig: inspect.Signature) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_every_public_method_of_the_sync_client_is_on_the_async_one_with_the_same_parameters():
    sync, asyn = _public_methods(WorkerClient), _public_methods(AsyncWorkerClient)
    assert sorted(set(sync) - set(asyn)) == []
    mismatched = {name: (_shape(sig), _shape(asyn[name])) for name, sig in sync.items()
                  if _shape(sig) != _shape(asyn[name])}
    assert mismatched == {}
    for name in sync:  # awaited, all of them
        assert inspect.iscoroutinefunction(getattr(AsyncWorkerClient, name)), name
