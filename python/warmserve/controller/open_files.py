"""File descriptors of the HTTP server: each client connection holds one, so the process's open-files limit caps
the connections it serves at once.

Two things here. ``raise_open_files_limit`` lifts the soft limit towards the hard one at start, as vLLM does
(``set_ulimit``, to 65535): many shells and services start processes at a soft limit of 1024 with a much higher hard
limit, and 1024 is reached by a few hundred streaming clients beside the controller's own sockets. And
``AcceptErrorLog``, the event loop's exception handler: when the limit is reached anyway, asyncio logs a traceback
for each failed accept (CPython 3.11 goes on trying the rest of the backlog after the first failure, so a full
backlog gave hundreds of tracebacks a second; found in review). Those become one ERROR line a minute that says what
ran out, the numbers, and the fix; every other exception keeps asyncio's own handling. `warmserve serve` puts
``accept_refusal.AcceptRefusal`` in front of it, which answers a client past the limit 503 and closes it; what it
cannot refuse (no spare descriptor, ENOBUFS, ENOMEM) comes here."""

from __future__ import annotations

import errno
import logging
import os
import resource
import time

log = logging.getLogger("warmserve.controller")

#: The soft open-files limit the server asks for, where the hard limit allows it (vLLM's set_ulimit target).
TARGET_OPEN_FILES = 65535
#: Seconds between two log lines about accepts that failed for want of descriptors or memory.
ACCEPT_ERROR_LOG_EVERY_S = 60.0
#: The errors asyncio's accept loop reports and retries a second later (selector_events._accept_connection).
_OUT_OF_RESOURCE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def raise_open_files_limit(target: int = TARGET_OPEN_FILES) -> int:
    """Raise the soft RLIMIT_NOFILE to ``target`` (or the hard limit, if lower); never lowers it. The soft limit
    after the call."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as e:  # a sandbox that forbids it: the server runs at the limit it has
        log.warning("could not raise the open-files limit from %d to %d (%s): the server takes fewer connections at "
                    "once than it could", soft, want, e)
        return soft
    log.debug("open-files limit raised from %d to %d (hard limit %s)", soft, want, hard)
    return want


#: The fix both lines below give.
OPEN_FILES_FIX = ("raise the open-files limit (`ulimit -n`, systemd's LimitNOFILE, a container's nofile ulimit), or "
                  "have clients hold fewer connections open")


class EveryLine:
    """Events counted between lines about them, a line at most once per ``every_s`` (``clock``: seconds)."""

    def __init__(self, every_s: float, clock=time.monotonic):
        self.every_s, self.clock = every_s, clock
        self.last_s: float | None = None
        #: Events since the last line (those it reports included).
        self.unreported = 0

    def count(self) -> tuple[int, str] | None:
        """Count one event; (events to report, " in the last N s" or "" for the first line) when a line is due,
        else None. The count starts again from there."""
        self.unreported += 1
        now_s = self.clock()
        if self.last_s is not None and now_s - self.last_s < self.every_s:
            return None
        since = "" if self.last_s is None else f" in the last {now_s - self.last_s:.0f} s"
        n, self.last_s, self.unreported = self.unreported, now_s, 0
        return n, since


def open_files_limit() -> str:
    """The soft open-files limit as a log line says it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


class AcceptErrorLog(EveryLine):
    """An asyncio exception handler (``loop.set_exception_handler``) that turns the accept loop's
    out-of-resource tracebacks into one line per ``every_s`` with the count in between; ``clock``: seconds."""

    def __init__(self, every_s: float = ACCEPT_ERROR_LOG_EVERY_S, clock=time.monotonic):
        super().__init__(every_s, clock)

    def __call__(self, loop, context: dict) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCE
                and "accept" in str(context.get("message", ""))):
            loop.default_exception_handler(context)
            return
        due = self.count()
        if due is not None:
            log.error("the HTTP server cannot accept connections: %s (%d failed accept(s)%s; open-files limit %s). "
                      "Clients wait in the listen backlog and are accepted when descriptors free up (retried each "
                      "second). Fix: %s; logged at most once per %g s", os.strerror(exc.errno), *due,
                      open_files_limit(), OPEN_FILES_FIX, self.every_s)
