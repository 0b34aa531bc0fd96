"""The controller's event loop held up: said in the log, as nothing else says it. Everything the controller does
(reading requests and worker messages, heartbeats, the policy's tick, streaming tokens) runs on that one loop, so a
stall of it is a stall of the whole server: each request waiting then gains the stall in TTFT. Found in review:
a /stats that held the loop 4-7 s on a server of 64 models pushed TTFT to 29 s, and no line said why.

Measured as the heartbeat round's lateness: the round sleeps its interval, so time past that is time the loop ran
something else (or the process did not run at all: stopped, or its host's CPUs taken). The hub already forgives
workers that stalled time (``WorkerHub.beat``); this only says it."""

from __future__ import annotations

import logging
import os

from warmserve.log_repeats import REPEAT_EVERY_S

#: A round this late (seconds) is a stall worth a line: a second added to every request's TTFT. Policy choice.
STALL_WARN_S = 1.0


class LoopStalls:
    """Call ``round(now_s)`` at each heartbeat round (monotonic seconds) of a loop that sleeps ``interval_s``.
    The first stall is logged at once; later ones are summed and logged at most once per ``every_s``."""

    def __init__(self, logger: logging.Logger, interval_s: float, every_s: float = REPEAT_EVERY_S,
                 warn_s: float = STALL_WARN_S):
        self.log, self.interval_s, self.every_s, self.warn_s = logger, interval_s, every_s, warn_s
        self._round_s: float | None = None
        self._logged_s: float | None = None
        self._count = 0  # stalls since the last line
        self._worst_s = 0.0
        self._total_s = 0.0

    def round(self, now_s: float) -> float:
        """Note a round at ``now_s``; returns how late it came (seconds, 0 for the first)."""
        late_s = 0.0 if self._round_s is None else max(0.0, now_s - self._round_s - self.interval_s)
        self._round_s = now_s
        if late_s >= self.warn_s:
            self._count += 1
            self._worst_s = max(self._worst_s, late_s)
            self._total_s += late_s
        if self._count and (self._logged_s is None or now_s - self._logged_s >= self.every_s):
            self._say(now_s)
        return late_s

    def _say(self, now_s: float) -> None:
        if self._count == 1:
            what = f"was held up for {self._worst_s:.1f} s"
        else:
            what = (f"was held up {self._count} times in the last {now_s - self._logged_s:.0f} s, "
                    f"{self._total_s:.1f} s in all, the longest {self._worst_s:.1f} s")
        self.log.warning(
            "the controller's event loop %s: requests, heartbeats and the policy waited meanwhile, and each request "
            "waiting then gained it in its TTFT. Causes: the host's CPUs taken (by the workers' threads beside it: "
            "give them fewer), memory swapped, the process stopped (SIGSTOP), or a slow call on the loop (a bug: "
            "`py-spy dump --pid %d` while it stalls shows where, and report it)", what, os.getpid())
        self._logged_s, self._count, self._worst_s, self._total_s = now_s, 0, 0.0, 0.0
