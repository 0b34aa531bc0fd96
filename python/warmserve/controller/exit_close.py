"""A Cluster still open when the interpreter exits is closed without a drain.

Its finalizer (``weakref.finalize``, run by weakref's own atexit hook) closes it then. With the default drain it
waited for the requests in flight, up to ``drain_timeout_s``, though nothing could read their answers any more:
found in review, a script that left a 1,900-token stream half read took 31-33 s to exit, saying nothing. The hook
here runs first (atexit runs the last registered first, and it is registered after the first finalizer exists), so
each open Cluster's close fails what runs at once, with one warning naming the fix where something did run.
"""

from __future__ import annotations

import atexit
import logging
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
#: The finalizers of the Clusters started in this process (a closed one's is dead, and holds nothing).
_open: list = []
_registered = False


def watch(finalizer) -> None:
    """Have a Cluster closed without a drain at interpreter exit. ``finalizer``: its ``weakref.finalize`` of
    ``cluster._shutdown(gate, controller, drain_flag)``; made before this call, so that weakref's atexit hook is
    registered before this module's."""
    global _registered
    with _lock:
        _open[:] = [f for f in _open if f.alive]
        _open.append(finalizer)
        if not _registered:
            atexit.register(_at_exit)
            _registered = True


def _at_exit() -> None:
    with _lock:
        left = [f.peek() for f in _open]
        _open.clear()
    for _, _, (gate, controller, drain_flag), _ in filter(None, left):  # peek(): None once a finalizer has run
        if gate.forked():  # found in review: a forked child's exit warned of its parent's cluster
            continue
        try:
            busy = controller._drainable()  # read off its loop's thread: the loop may be mid-step, so a hint
        except Exception:
            busy = False
        if drain_flag[0] and busy:
            log.warning("a warmserve.Cluster was not closed before the interpreter exits: the requests it still "
                        "runs fail now instead of being drained (no one can read their answers). Fix: close() it, "
                        "or use it in a with-block, to drain them")
        drain_flag[0] = False
