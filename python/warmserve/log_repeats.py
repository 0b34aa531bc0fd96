"""A failure of a loop's round (the policy tick, the heartbeats, the request expiry) that recurs at every round:
logged the first time with its trace, then, while it is the same failure, once a minute with how often it came.
Found in review: a failure that held logged a full trace at every round, twice a second at the default tick, for
as long as the server ran, which buries every other line of the log."""

from __future__ import annotations

import logging
import time

#: Seconds between two lines of the same failure, after its first.
REPEAT_EVERY_S = 60.0


class RepeatedFailure:
    """Call ``failed()`` from the ``except`` block of each failed round of the loop called ``what``."""

    def __init__(self, logger: logging.Logger, what: str, every_s: float = REPEAT_EVERY_S):
        self.log, self.what, self.every_s = logger, what, every_s
        self._key: tuple[type, str] | None = None
        self._logged_s = 0.0
        self._since = 0  # the same failure's rounds since its last line

    def failed(self, exc: BaseException) -> None:
        now, key = time.monotonic(), (type(exc), str(exc))
        if key != self._key:
            self._key, self._logged_s, self._since = key, now, 0
            self.log.error("%s failed", self.what, exc_info=exc)
            return
        self._since += 1
        if now - self._logged_s >= self.every_s:
            self.log.error("%s failed again, %d times in the last %.0f s, with the same error as the trace logged "
                           "before: %s: %s (a bug: report it with that trace)", self.what, self._since,
                           now - self._logged_s, type(exc).__name__, exc)
            self._logged_s, self._since = now, 0
