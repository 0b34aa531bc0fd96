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


def history_on_clock(history: dict | None, origin_s: float, models) -> dict | None:
    """History windows (Unix-time starts) moved onto the policy's clock; models not served are left out."""
    if not history:
        return None
    import numpy as np

    out = {}
    for m, (starts, avg, peak) in history.items():
        if m not in models:
            log.warning("history names model %r, which this cluster does not serve: ignored", m)
            continue
        out[m] = (np.asarray(starts, float) - origin_s, np.asarray(avg, float), np.asarray(peak, float))
    return out
