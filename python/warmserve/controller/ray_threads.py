"""Ray's blocking calls on daemon threads of their own, awaited from the event loop (used by ``ray_launch``): a Ray
call may wait for ever (a head that is gone), and neither the loop nor the process's exit may wait with it."""

from __future__ import annotations

import asyncio
import threading


async def in_daemon_thread(fn, undo=None, name: str = "warmserve-ray-connect"):
    """``fn()`` on a daemon thread, awaited: a cancelled wait leaves the thread, which keeps no exit waiting, and
    ``undo(result)`` runs on a thread if ``fn`` then succeeds."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def run():
        try:
            out, err = fn(), None
        except BaseException as e:  # handed to the awaiting coroutine
            out, err = None, e
        if fut.cancelled() and err is None and undo is not None:
            undo(out)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(_settle_future, fut, out, err, undo)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await fut


def _settle_future(fut: asyncio.Future, out, err, undo=None) -> None:
    if fut.done():
        # Cancelled after ``fn`` ended, before this ran: nobody takes the result, so it is undone (off the loop).
        if fut.cancelled() and err is None and undo is not None:
            threading.Thread(target=undo, args=(out,), name="warmserve-ray-undo", daemon=True).start()
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(out)
