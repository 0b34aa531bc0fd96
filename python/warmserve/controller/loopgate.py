"""The door between the caller's threads and the controller's event loop of a ``Cluster``: work handed to the loop
either runs or fails with ClosedError; none is left waiting on a loop that has stopped.

Found in review: ``asyncio.run_coroutine_threadsafe`` after close() had queued ``loop.stop`` (and before the loop's
thread ended) queued a callback the stopped loop never ran, and its caller waited for ever; so did one queued just
before the stop whose task was to take its first step in the stop's turn. Here the gate shuts before the stop is
queued (later calls: ClosedError at once), and what the stopped loop left unfinished is cancelled by one last run
of the loop on its thread, as ``asyncio.run`` ends, its callers told ClosedError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading

from warmserve.errors import ClosedError

#: How long the last run of a stopped loop waits for the work it cancelled to unwind.
UNWIND_WAIT_S = 5.0


def closed_error() -> ClosedError:
    return ClosedError("this Cluster is closed: its controller and workers have stopped; start a new Cluster",
                       closed=True)


class LoopGate:
    """Runs ``loop`` on a daemon thread of its own (``thread``, started here) and hands it coroutines from other
    threads, until ``stop_loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_name: str):
        self.loop = loop
        #: The process whose thread runs the loop (``forked``).
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._open = True
        #: Futures handed out and not done yet: those the stopped loop leaves are failed with ClosedError.
        self._pending: set[concurrent.futures.Future] = set()
        #: Set when stop_loop is through: the loop has closed (or its thread did not end, and was left).
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.thread.start()

    def forked(self) -> ClosedError | None:
        """The error for a use of this gate's owner in a child forked from the process that made it, where the loop,
        its thread and the controller's workers are the parent's (found in review: a forked child's exit tried to
        close them, and its `generate` was told the Cluster was closed though it serves on in the parent); None in
        that process."""
        if self.pid == os.getpid():
            return None
        return ClosedError(f"this Cluster belongs to process {self.pid}: a process forked from it cannot use it (its "
                           "controller thread and workers are the parent's); start a Cluster in the child, or use "
                           "the spawn start method")

    def _run(self) -> None:
        try:
            self.loop.run_forever()
        except BaseException:
            # The thread ends without stop_loop (a callback raised SystemExit): the gate shuts and what was handed
            # in fails now (found in review: it waited until someone called stop_loop, or for ever)
            with self._lock:
                self._open = False
                left = list(self._pending)
            for fut in left:
                _fail(fut)
            raise
        if not self._open:  # stopped by stop_loop: what the loop left is unwound here, on the loop's own thread
            self._unwind()

    @property
    def open(self) -> bool:
        return self._open

    def submit(self, coro, *inner, ended: threading.Event | None = None) -> concurrent.futures.Future:
        """Schedule ``coro`` on the loop; its concurrent future. ClosedError once the gate has shut, with ``coro``
        (and the ``inner`` coroutines it would have awaited) closed unrun. ``ended`` is set once nothing of the work
        runs any more: its task has ended, or it never started (cancelled before the loop came to it, that is at
        once: the caller need not wait for a busy loop). Found in review: a caller that cancelled work the loop had
        not started yet waited for a flag set in the coroutine's own ``finally``, which a coroutine closed unrun
        never runs: generate(timeout_s=0.1) on a loop busy for a moment took CANCEL_WAIT_S (30 s)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        task_of: list[asyncio.Task] = []
        started: list[bool] = []  # under self._lock: start's decision and a cancel's look at it are ordered

        def start() -> None:
            with self._lock:
                run = not fut.done() and self._open
                if run:
                    started.append(True)
            if not run:  # cancelled by its caller, or the loop is stopping: never started
                for c in (coro, *inner):
                    c.close()
                if not fut.done():
                    _fail(fut)
                if ended is not None:
                    ended.set()
                return
            task = self.loop.create_task(coro)
            task_of.append(task)
            task.add_done_callback(self._settle(fut, inner, ended))

        def forget(f: concurrent.futures.Future) -> None:
            with self._lock:
                self._pending.discard(f)
                unstarted = not started
            if f.cancelled():  # by its caller (a timeout, Ctrl-C): stop the work too
                if unstarted and ended is not None:  # start will find it cancelled and close it unrun
                    ended.set()
                try:
                    # On the loop, after start (queued first): it finds the task, or start found fut done.
                    self.loop.call_soon_threadsafe(lambda: task_of and task_of[0].cancel())
                except RuntimeError:  # the loop has closed: nothing of it runs any more
                    pass

        with self._lock:
            if self._open and self.thread.is_alive():  # a loop whose thread died (a callback raised SystemExit)
                self._pending.add(fut)
                self.loop.call_soon_threadsafe(start)
                queued = True
            else:
                queued = False
        if not queued:
            for c in (coro, *inner):
                c.close()
            if ended is not None:
                ended.set()
            raise closed_error()
        fut.add_done_callback(forget)
        return fut

    def _settle(self, fut: concurrent.futures.Future, inner: tuple, ended: threading.Event | None):
        def settle(task: asyncio.Task) -> None:
            if task.cancelled():
                # Cancelled before its first step, its coroutine never awaited the inner ones: closed here, or
                # each would warn "never awaited" when collected. (Closing a finished one does nothing.)
                for c in inner:
                    c.close()
            if ended is not None:
                ended.set()
            if fut.done():  # its caller cancelled it
                return
            try:
                if task.cancelled():
                    # Cancelled by the last run of a stopped loop (stop_loop), or by its caller meanwhile.
                    if self._open:
                        fut.cancel()
                    else:
                        fut.set_exception(closed_error())
                elif task.exception() is not None:
                    fut.set_exception(task.exception())
                else:
                    fut.set_result(task.result())
            except concurrent.futures.InvalidStateError:  # its caller cancelled it between the check and here
                pass

        return settle

    def stop_loop(self, join_timeout_s: float = 10.0) -> None:
        """Shut the gate, stop the loop and wait for its thread, which cancels what the loop left unfinished
        (``_unwind``); fail the callers of anything still pending with ClosedError, and close the loop. A loop
        whose thread does not end within join_timeout_s is left running (a callback of it blocks)."""
        try:
            with self._lock:
                self._open = False
                try:
                    self.loop.call_soon_threadsafe(self.loop.stop)
                except RuntimeError:  # closed already
                    return
            self.thread.join(timeout=join_timeout_s)
            if self.thread.is_alive():
                return
            with self._lock:
                left = list(self._pending)
            for fut in left:  # work that ignored its cancellation: its caller is told all the same
                _fail(fut)
            self.loop.close()
        finally:
            self.stopped.set()

    def _unwind(self) -> None:
        """One last run of the stopped loop, on its thread (not the closing one: that may run a loop of its own,
        a close() from async code): the callbacks it left run first (a ``start`` it never came to fails its
        caller, the gate being shut), then every task is cancelled and given UNWIND_WAIT_S to run its clean-up;
        ``settle`` tells their callers ClosedError."""

        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=UNWIND_WAIT_S)

        self.loop.run_until_complete(cancel_all())


def _fail(fut: concurrent.futures.Future) -> None:
    try:
        fut.set_exception(closed_error())
    except concurrent.futures.InvalidStateError:  # its caller cancelled it meanwhile
        pass
