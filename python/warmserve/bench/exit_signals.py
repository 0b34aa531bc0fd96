"""SIGTERM (and SIGHUP) as SystemExit, so that the ``finally`` clauses that end a benchmark's child processes run
for them too (found in review: a SIGTERM from timeout(1) or a CI job's kill left `bench replay`'s serve child and
`calibrate --parallel`'s processes running, re-parented to init); ``run_async`` for the asyncio parts. Standard
library only, and asyncio imported where used: `calibrate` imports this in the fresh engine processes whose start it
times."""

from __future__ import annotations

import contextlib
import signal
import threading

#: the signals ``exit_on_signals`` turns into SystemExit
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


#: Depth of the ``signals_held`` blocks open, and a signal that came meanwhile (``exit_on_signals``).
_holding: list[bool] = []
_pending: list[int] = []
#: The ``exit_on_signals`` blocks open: (the signals, the one taken so far if any), innermost last (``run_async``).
_blocks: list[tuple[tuple, list[int]]] = []


@contextlib.contextmanager
def exit_on_signals(signals=EXIT_SIGNALS):
    """Within the block, the first of ``signals`` raises SystemExit(128 + its number) in the main thread, so every
    ``finally`` on the way out runs (``LiveCluster.close``); within a ``signals_held`` block, once that block ends.
    Later ones are ignored: a second kill must not cut that clean-up short and orphan the child after all (it is
    bounded: ``close`` kills the child after its timeout). The earlier handlers come back after the block. Off the
    main thread, where Python takes no signal handlers, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    _pending.clear()
    # Found in review: `nohup warmserve bench replay ... &` ended with status 129 when its terminal closed, the handler
    # here having replaced the SIG_IGN that nohup set. A signal this process was started ignoring stays ignored.
    signals = tuple(s for s in signals if signal.getsignal(s) is not signal.SIG_IGN)

    def handler(signum, frame):
        if got:
            return
        got.append(signum)
        if _holding:
            _pending.append(signum)
            return
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in signals}
    _blocks.append((tuple(signals), got))
    try:
        yield
    finally:
        _blocks.pop()
        for s, h in old.items():
            signal.signal(s, h)


def run_async(main):
    """``asyncio.run(main)`` within an ``exit_on_signals`` block: there the first signal cancels ``main`` (its tasks
    end as cancelled ones do, their clean-up run) and raises SystemExit once the loop has closed. Found in review: the
    block's handler raised SystemExit in whichever task ran as the signal came, aiohttp's request writer in `bench
    replay`, and asyncio printed its traceback ("Task exception was never retrieved") beside the "interrupted" line.
    Outside such a block, or off the main thread, it is ``asyncio.run``."""
    import asyncio

    if not _blocks or threading.current_thread() is not threading.main_thread():
        return asyncio.run(main)
    signals, got = _blocks[-1]

    async def guarded():
        loop, task = asyncio.get_running_loop(), asyncio.current_task()

        def on_signal(signum: int) -> None:
            if not got:  # later ones are ignored, as the block's handler does
                got.append(signum)
                task.cancel()

        # the loop's handlers replace the block's for now; removing them leaves SIG_DFL, so the block's come back
        old = {s: signal.getsignal(s) for s in signals}
        for s in signals:
            loop.add_signal_handler(s, on_signal, s)
        try:
            return await main
        except asyncio.CancelledError:
            if got:
                return None
            raise
        finally:
            for s in signals:
                loop.remove_signal_handler(s)
                signal.signal(s, old[s])

    out = asyncio.run(guarded())
    if got:
        raise SystemExit(128 + got[0])
    return out


@contextlib.contextmanager
def signals_held():
    """Hold ``exit_on_signals``' SystemExit until the block ends: around a Popen, whose child must reach the list
    the clean-up ends. Found in CI: a SIGTERM that came inside Popen, between its fork and its return, raised there,
    and the child ran on, owned by no list (`calibrate --parallel`'s test saw a worker outlive the run)."""
    _holding.append(True)
    try:
        yield
    finally:
        _holding.pop()
        if not _holding and _pending:
            raise SystemExit(128 + _pending.pop())
