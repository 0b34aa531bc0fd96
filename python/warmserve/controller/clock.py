"""The policy's clock on a live cluster: its t = 0 is a local midnight, and history windows move onto it."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("warmserve.controller")


def local_midnight(t: float) -> float:
    """Unix time of the local midnight that starts the day of Unix time t."""
    lt = time.localtime(t)
    return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))


#: Days before now where the policy's clock starts when no history reaches further back.
CLOCK_DAYS_BACK = 7


def policy_clock_origin(now_unix_s: float, history: dict | None) -> float:
    """The policy's t = 0: a local midnight (so now_s % 86400 is the time of day) at or before every history
    window and a week before now, so every window has a non-negative start."""
    earliest = now_unix_s - CLOCK_DAYS_BACK * 86400
    for starts, _, _ in (history or {}).values():
        if len(starts):
            earliest = min(earliest, float(min(starts)))
    return local_midnight(earliest)


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
        if m not in models:
            log.warning("history names model %r, which this cluster does not serve: ignored", m)
            continue
        # the smallest step: a file of the windows with traffic only has some consecutive ones
        step_s = float(np.min(np.diff(np.unique(starts)))) if len(starts) > 2 else 0.0
        if window_s and step_s > 1.5 * window_s:
            log.warning("history of model %r: its rows are at least %.0f s apart, the policy's window is %.0f s: "
                        "the windows between rows have no data and get no forecast; give one row per window (or "
                        "finer rows, which are averaged), or set policy window_s to the file's step", m, step_s,
                        window_s)
        out[m] = (np.asarray(starts, float) - origin_s, np.asarray(avg, float), np.asarray(peak, float))
    return out
