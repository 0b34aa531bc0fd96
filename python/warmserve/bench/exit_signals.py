"""SIGTERM (and SIGHUP) as SystemExit, so that the ``finally`` clauses that end a benchmark's child processes run
for them too (found in review: a SIGTERM from timeout(1) or a CI job's kill left `bench replay`'s serve child and
`calibrate --parallel`'s processes running, re-parented to init). Standard library only: `calibrate` imports it in
the fresh engine processes whose start it times."""

from __future__ import annotations

import contextlib
import signal
import threading

#: the signals ``exit_on_signals`` turns into SystemExit
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


#: Depth of the ``signals_held`` blocks open, and a signal that came meanwhile (``exit_on_signals``).
_holding: list[bool] = []
_pending: list[int] = []


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

    def handler(signum, frame):
        if got:
            return
        got.append(signum)
        if _holding:
            _pending.append(signum)
            return
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


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
