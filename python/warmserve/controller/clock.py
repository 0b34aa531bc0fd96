"""The policy's clock on a live cluster: its t = 0 is a midnight of the zone the load follows
(``ControllerConfig.load_timezone``), its calendar that zone's days, and history windows move onto it."""

from __future__ import annotations

import logging
import math
import threading
import time

from warmserve.policy.calendar import ZoneCalendar, zone_midnight

log = logging.getLogger("warmserve.controller")


#: Days before now where the policy's clock starts when no history reaches further back.
CLOCK_DAYS_BACK = 7
#: Most windows before now the live policy's history reaches back (every model holds one per window from the clock's
#: origin on): found in review, one history row a year old under 1 s windows took the controller to 3.7 GB and its
#: first tick to 13.4 s. About 12 days at 1 s windows (16 MiB a model); past 30 s windows, the file's 366 days bind.
HISTORY_MAX_WINDOWS = 1 << 20

# Linux's CLOCK_BOOTTIME is CLOCK_MONOTONIC (time.monotonic) plus the time the machine was suspended: found in review,
# a VM paused for hours left a monotonic policy clock behind the wall clock by the pause, so the daily windows the
# forecasts are keyed on lagged the load's. Other systems keep the monotonic clock.
_POLICY_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)

#: A change of the wall clock against the policy clock's base taken as the wall clock being set, seconds. Linux slews
#: both alike (NTP's rate corrections move CLOCK_MONOTONIC as they move CLOCK_REALTIME), so they part only where the
#: date is set: an NTP step, a VM's clock set at its resume from a host's pause, an operator; a leap second by 1 s.
WALL_STEP_S = 2.0


class PolicyClock:
    """The clock the live policy's time advances by: ``base`` (CLOCK_BOOTTIME), moved forward where the wall clock
    ``wall`` steps ahead of it, never backwards. Found in the clock review: a wall clock set 3 h forward while serving
    (a VM resumed after a host's pause, which CLOCK_BOOTTIME does not count; an NTP step) left the policy on the
    start's clock, so each window --record-history wrote was stamped 3 h before the time it was measured, and the
    forecasts' daily slots lagged by 3 h until a restart. A step back cannot be followed (the policy's windows only
    advance): it is said, with what it leaves ahead, and the policy holds the lead until the wall clock catches up
    (a step forward that undoes a step back leaves none)."""

    def __init__(self, wall=time.time, base=lambda: time.clock_gettime(_POLICY_CLOCK)):
        self._wall, self._base = wall, base
        self._lock = threading.Lock()
        #: The most the wall clock has been ahead of ``base`` (None: not read yet), and of that, what was added.
        self._lead_s: float | None = None
        self._ahead_s = 0.0
        #: How far behind the policy clock the wall clock was last said to be (0: in step).
        self._told_behind_s = 0.0

    def __call__(self) -> float:
        with self._lock:
            base_s = self._base()
            lead_s = self._wall() - base_s
            if self._lead_s is None:
                self._lead_s = lead_s
            elif lead_s > self._lead_s + WALL_STEP_S:
                log.warning("the wall clock stepped %.0f s forward (an NTP step, a VM resumed from a pause, the date "
                            "set): the policy's time moves with it, so its daily slots and the windows "
                            "--record-history writes stay on this machine's clock; the windows it skips are closed "
                            "with the requests in flight at the step", lead_s - self._lead_s)
                self._ahead_s += lead_s - self._lead_s
                self._lead_s = lead_s
                self._told_behind_s = 0.0
            behind_s = self._lead_s - lead_s
            if behind_s > self._told_behind_s + WALL_STEP_S:
                log.warning("the wall clock stepped %.0f s back (an NTP step, the date set): the policy's time does "
                            "not run backwards, so its daily slots and the windows --record-history writes are %.0f s "
                            "ahead of this machine's clock until it catches up or the controller restarts (a restart "
                            "reads rows ahead of now with a warning; more than a day ahead, it refuses them)",
                            behind_s - self._told_behind_s, behind_s)
                self._told_behind_s = behind_s
            elif self._told_behind_s and behind_s <= WALL_STEP_S:
                log.warning("the wall clock is back in step with the policy's time (within %.0f s)", WALL_STEP_S)
                self._told_behind_s = 0.0
            return base_s + self._ahead_s


#: The one policy clock of this process: every controller's time is read from it (``policy_clock_s``).
_policy_clock = PolicyClock()


def policy_clock_s() -> float:
    """Seconds on the clock the live policy's time advances by: never backwards, counting a suspend, and moved
    forward where the wall clock is set forward (``PolicyClock``)."""
    return _policy_clock()


def history_in_reach(history: dict | None, models, now_unix_s: float, window_s: float) -> dict | None:
    """The history the live policy starts from: the rows of the models this cluster serves (the others named in one
    warning: found in review, a shared file of 2,000 models logged 2,000 lines), none older than
    HISTORY_MAX_WINDOWS windows before now (dropped with one warning; the record file keeps them)."""
    if not history:
        return history
    import numpy as np

    unserved = sorted(m for m in history if m not in models)
    if unserved:
        log.warning("history names %d model(s) this cluster does not serve, ignored: %s%s", len(unserved),
                    ", ".join(map(repr, unserved[:5])), ", ..." if len(unserved) > 5 else "")
        if len(unserved) == len(history):
            log.warning("none of the history's models is served here, so the forecasts start from nothing: check "
                        "that the served models' names (--model NAME=PATH) are the file's")
    cut = now_unix_s - HISTORY_MAX_WINDOWS * window_s
    out, dropped, oldest = {}, 0, math.inf
    for m, (starts, avg, peak) in history.items():
        if m in models:
            starts = np.asarray(starts, float)
            keep = starts >= cut
            if not keep.all():
                dropped += int((~keep).sum())
                oldest = min(oldest, float(starts.min()))
            out[m] = (starts[keep], np.asarray(avg, float)[keep], np.asarray(peak, float)[keep])
    if dropped:
        log.warning("history: %d rows from %.1f days back (the oldest) to %.1f days back are not used: the policy "
                    "holds at most %d windows of %g s (%.1f days) before now. Fix: a longer policy window_s reaches "
                    "further back", dropped, (now_unix_s - oldest) / 86400, (now_unix_s - cut) / 86400,
                    HISTORY_MAX_WINDOWS, window_s, (now_unix_s - cut) / 86400)
    return out


def policy_clock_origin(now_unix_s: float, history: dict | None, zone: str = "") -> float:
    """The policy's t = 0: a midnight of time zone ``zone`` ("" : the local one) at or before every history window
    and a week before now, so every window has a non-negative start."""
    earliest = now_unix_s - CLOCK_DAYS_BACK * 86400
    for starts, _, _ in (history or {}).values():
        if len(starts):
            earliest = min(earliest, float(min(starts)))
    return zone_midnight(earliest, zone)


def policy_calendar(origin_unix_s: float, zone: str = "") -> ZoneCalendar:
    """The days the policy's forecasts follow: those of ``zone`` ("" : the local one), daylight saving included,
    from ``origin_unix_s`` (``policy_clock_origin``) on."""
    return ZoneCalendar(origin_unix_s, zone)


def history_on_clock(history: dict | None, origin_s: float, models, window_s: float | None = None) -> dict | None:
    """History windows (Unix-time starts) moved onto the policy's clock; models not served are left out. With
    ``window_s`` (the policy's window), a model whose rows are all further apart than a window is warned of:
    the windows between its rows have no data, so no forecast (found in review: an hourly file under 300 s windows
    forecast 1 window in 12). Not filled in: rows further apart may as well be a file that lists only the windows
    with traffic."""
    if not history:
        return None
    import numpy as np

    out = {}
    for m, (starts, avg, peak) in history.items():
        if m not in models:  # history_in_reach named them
            continue
        # the smallest step: a file of the windows with traffic only has some consecutive ones. Counted over
        # distinct starts (found in review: three rows of one start, as a clock stepped back writes, left no step
        # and the minimum of none crashed the start)
        distinct = np.unique(starts)
        step_s = float(np.min(np.diff(distinct))) if len(distinct) > 2 else 0.0
        if window_s and step_s > 1.5 * window_s:
            log.warning("history of model %r: its rows are at least %.0f s apart, the policy's window is %.0f s: "
                        "the windows between rows have no data and get no forecast; give one row per window (or "
                        "finer rows, which are averaged), or set policy window_s to the file's step", m, step_s,
                        window_s)
        out[m] = (np.asarray(starts, float) - origin_s, np.asarray(avg, float), np.asarray(peak, float))
    return out
