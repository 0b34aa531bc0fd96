"""The WARNING line of an HTTP answer of status 500 or more (the access log, at INFO, has a line for every request).

Overload answers (503: a model's queue full at max_queue or one that would hold a request past request_timeout_s
(queue_wait.py), no worker, a drain; 504: a request that waited past request_timeout_s) come in floods, one per
request the server could not take: found in the overload review, three models flooded past max_queue 64 by clients
retrying within a second wrote 22,937 such WARNING lines in about 200 s, each beside its access-log line, and any
other warning of that time was lost among them. Those statuses are logged at most once per ``OVERLOAD_LOG_EVERY_S``
each, with the count of like answers since; any other (a 500, a bug; a 502, a lost worker) is logged every time."""

from __future__ import annotations

import logging
import time

from warmserve.controller.open_files import EveryLine

log = logging.getLogger("warmserve.controller")

#: The statuses the server answers for want of room or time, not for a fault of one request.
OVERLOAD_STATUSES = (503, 504)
#: Seconds between two WARNING lines about answers of one overload status.
OVERLOAD_LOG_EVERY_S = 10.0


class ServerErrorLog:
    """Writes the WARNING of each 5xx answer (``__call__``), those of an OVERLOAD_STATUSES status at most once per
    ``every_s`` for that status; ``clock``: seconds."""

    def __init__(self, every_s: float = OVERLOAD_LOG_EVERY_S, clock=time.monotonic):
        self.every_s, self.clock = every_s, clock
        self._lines: dict[int, EveryLine] = {}

    def __call__(self, method: str, path: str, status: int, request_id: str, after_200: bool) -> None:
        """``after_200``: the client had a 200, then its stream ended with an error event of ``status``."""
        how = "answered 200, then its stream ended with an error event of" if after_200 else "answered"
        if status not in OVERLOAD_STATUSES:
            log.warning("%s %s %s %d (request %s)", method, path, how, status, request_id)
            return
        line = self._lines.get(status)
        if line is None:
            line = self._lines[status] = EveryLine(self.every_s, self.clock)
        due = line.count()
        if due is None:
            return
        n, since = due
        log.warning("%s %s %s %d (request %s); %d answer(s) of status %d%s (each has its access-log line; this "
                    "warning is logged at most once per %g s a status)", method, path, how, status, request_id, n,
                    status, since, self.every_s)
