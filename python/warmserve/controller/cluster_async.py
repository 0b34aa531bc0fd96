"""`warmserve.Cluster.astart`: a Cluster started from asyncio code without stalling the caller's event loop.

A start blocks for seconds (the workers start and load the models, up to ``start_timeout_s``), as a close does
(the requests in flight drain, up to ``drain_timeout_s``). Found in review: called in a coroutine, as a FastAPI or
aiohttp app's startup and shutdown call them, ``Cluster()`` stalled that loop 2.4 s (the demo model on one CPU
worker) and ``close()`` 5.2 s (the drain of one 400-token generation): nothing else of the app ran meanwhile. So
the start runs on a thread of its own, and ``aclose()`` runs the close on one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading


async def start(cls, args: tuple, kwargs: dict):
    """``cls(*args, **kwargs)`` built on a thread of its own and awaited. The task awaiting it cancelled, the start
    is stopped as a Ctrl-C stops it (its workers stopped: ``Cluster._run`` watches ``abandon``); a start that
    ended meanwhile is closed, with no drain, as nothing will use it."""
    # Pending while awaited; cancelled with the awaiting task (asyncio.wrap_future passes a cancel on), else it
    # carries the result.
    abandon: concurrent.futures.Future = concurrent.futures.Future()

    def build() -> None:
        cluster = cls.__new__(cls)
        cluster._abandon = abandon
        try:
            cluster.__init__(*args, **kwargs)
        except BaseException as e:
            _settle(abandon, error=e)
            return
        finally:
            del cluster._abandon  # the result must not hold its own future: a cycle only the gc would free
        if not _settle(abandon, result=cluster):
            cluster.close(drain=False)

    # Not a daemon: an interpreter that ends meanwhile waits for the start to stop, and its workers with it.
    threading.Thread(target=build, name="warmserve-start").start()
    return await asyncio.wrap_future(abandon)


def wait(fut: concurrent.futures.Future, abandon: concurrent.futures.Future, limit_s: float | None) -> None:
    """Wait up to ``limit_s`` for ``fut`` to end or ``abandon`` to be cancelled. By callbacks: found in review, a
    Future.cancel() wakes no concurrent.futures.wait (only an executor's set_running_or_notify_cancel does), and
    a cancelled astart waited for the whole start (its remote workers' 120 s)."""
    woken = threading.Event()
    for f in (fut, abandon):
        f.add_done_callback(lambda _: woken.set())
    woken.wait(limit_s)


def _settle(fut: concurrent.futures.Future, result=None, error: BaseException | None = None) -> bool:
    """Set ``fut``'s outcome; False when its awaiting task was cancelled first."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
        return True
    except concurrent.futures.InvalidStateError:
        return False
