"""A clean refusal of HTTP clients when the server is out of file descriptors, by the spare-descriptor trick (libev's,
nginx's): one descriptor is kept open on /dev/null; when accept() fails with EMFILE or ENFILE, it is closed, the
waiting client accepted into the freed slot, answered 503 with Retry-After and closed, and the spare opened again.

Found in review (a non-root user's `ulimit -n 64`, 80 idle clients held open): CPython 3.11's accept loop, on
EMFILE, removes the listener's reader and schedules a retry in a second, once per failed accept, and tries the rest
of its backlog (``LISTEN_BACKLOG``, 1024) in the same tick: every retry that found the backlog still full scheduled
up to 1024 more. The controller's CPU went 7%, 25%, 50%, 80% in successive 5 s, 2.5 million failed accepts a
minute, on the event loop that serves every request; and the clients waited, unanswered, until their own timeout.
Taking each waiting client off the backlog with an answer ends both: the next accept finds it empty."""

from __future__ import annotations

import errno
import logging
import os
import socket
import time

from warmserve.controller.open_files import OPEN_FILES_FIX, EveryLine, open_files_limit

log = logging.getLogger("warmserve.controller")

#: Descriptors out, for the process (EMFILE) or the machine (ENFILE): the ones a spare descriptor can stand in for.
_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
#: Seconds a refused client is told to wait before it tries again.
REFUSAL_RETRY_AFTER_S = 1
_BODY = (b'{"error": {"message": "the server is out of file descriptors (its open-files limit); retry shortly", '
         b'"type": "service_unavailable", "param": null, "code": "too_many_connections"}}')
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: "
           + str(REFUSAL_RETRY_AFTER_S).encode() + b"\r\nconnection: close\r\ncontent-length: "
           + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)
#: Seconds between two log lines about refused clients.
REFUSAL_LOG_EVERY_S = 60.0


class AcceptRefusal(EveryLine):
    """An asyncio exception handler (``loop.set_exception_handler``) that answers the client an accept could not
    take for want of descriptors with a 503 (see the module); every other exception, and a refusal that cannot be
    made (no spare), goes to ``inner``. ``clock``: seconds."""

    def __init__(self, inner, every_s: float = REFUSAL_LOG_EVERY_S, clock=time.monotonic):
        super().__init__(every_s, clock)
        self.inner = inner
        self.spare = _open_spare()
        #: Clients refused in all.
        self.refused = 0

    def __call__(self, loop, context: dict) -> None:
        exc = context.get("exception")
        listener = context.get("socket")
        if not (isinstance(exc, OSError) and exc.errno in _NO_DESCRIPTORS and listener is not None
                and "accept" in str(context.get("message", "")) and self._refuse_one(listener.fileno())):
            self.inner(loop, context)
            return
        self.refused += 1
        due = self.count()
        if due is not None:
            n, since = due
            log.error("the HTTP server is out of file descriptors (%s; open-files limit %s): %d new connection(s)%s "
                      "answered 503 with Retry-After: %d and closed; connections already open are served. Fix: %s; "
                      "logged at most once per %g s", os.strerror(exc.errno), open_files_limit(), n, since,
                      REFUSAL_RETRY_AFTER_S, OPEN_FILES_FIX, self.every_s)

    def _refuse_one(self, listener_fd: int) -> bool:
        """Accept one waiting client into the spare's slot, answer it 503 and close it; False when there is no spare
        (it could not be opened again after a refusal) or nothing was accepted."""
        if self.spare is None:
            self.spare = _open_spare()
            return False
        os.close(self.spare)
        self.spare = None
        # A socket object over the listener's own descriptor (no dup: that would take the slot just freed),
        # detached before it goes so the listener stays open.
        listener = socket.socket(fileno=listener_fd)
        try:
            listener.setblocking(False)  # as asyncio keeps it: an empty backlog is an error here, not a wait
            conn, _ = listener.accept()
        except OSError:
            conn = None
        finally:
            listener.detach()
        if conn is not None:
            with conn:
                conn.setblocking(False)
                try:
                    # The request read first: closed with it unread, the kernel would reset the connection, and
                    # the client could lose the answer to the reset.
                    conn.recv(65536)
                except OSError:
                    pass
                try:
                    conn.send(REFUSAL)
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        self.spare = _open_spare()
        return conn is not None


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
