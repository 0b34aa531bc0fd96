"""Where a moment of the driver's clock falls in the day the load follows: the forecasts' daily season.

The driver's clock (``now_s``) counts seconds from a midnight and never runs backwards (the live controller's
follows CLOCK_BOOTTIME and the wall clock's steps forward: controller/clock.py). The day people's traffic follows is
a wall-clock day of a time zone, 23 or 25 hours long where daylight saving time starts or ends. A forecaster that
took a day as 86400 s of the driver's clock saw the daily pattern move by an hour at each switch and kept the moved
slots for weeks (found in review: a Berlin load with hourly history from January forecast 15 at 09:00 sixteen days
after the March switch, where 100 came).

So the history's windows are indexed by local time: window i starts ``i * window_s`` after the origin's midnight
on the zone's wall clock (``local_s``). Where the clock springs forward, an hour of windows gets no data (NaN, as
any gap); where it falls back, an hour of windows comes twice (``repeated``) and its two hours are merged.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import time
import zoneinfo

import numpy as np

from warmserve.errors import InvalidArgumentError

#: The longest a clock has ever been set back at once (Antarctica's Troll station, 2 h): the span searched for a
#: fall-back switch before a moment.
MAX_SETBACK_S = 7200.0

#: Step of the grid on which ``ZoneCalendar.local_array`` looks for switches, seconds: no zone has switched twice
#: within 6 hours (two would go unseen where they cancel out).
SWITCH_GRID_S = 6 * 3600.0


class Calendar:
    """Days of 86400 s of the driver's clock, as in a zone with no daylight saving (UTC): the simulator's, whose
    workloads' days are 86400 s by construction (``Workload.day_s``)."""

    def local_s(self, t_s: float) -> float:
        """Wall-clock seconds since the origin's midnight at driver time ``t_s``."""
        return t_s

    def local_array(self, t_s) -> np.ndarray:
        """``local_s`` of each of many moments."""
        return np.asarray(t_s, dtype=np.float64)

    def repeated(self, t_s: float) -> bool:
        """Whether the wall clock showed the time of ``t_s`` before (the hour after a fall-back switch)."""
        return False


class ZoneCalendar(Calendar):
    """The days of time zone ``zone`` (an IANA name; "" is this machine's local zone, as the C library knows it),
    the driver's t = 0 being Unix time ``origin_unix_s`` (a midnight there: ``zone_midnight``)."""

    def __init__(self, origin_unix_s: float, zone: str = ""):
        self.tz = zone_info(zone)
        self.origin_unix_s = float(origin_unix_s)
        # local_s counts from the nominal 00:00 of the origin's date: where a switch skips midnight, the day starts
        # at 01:00 (found in review: Santiago, counted from the origin instant, put 12:00 at 11 h all run long)
        wall0_s = self.origin_unix_s + self._offset_s(0.0)
        self._base_s = self.origin_unix_s - math.floor(wall0_s / 86400.0) * 86400.0
        self._cache: dict[float, float] = {}
        self._switches: tuple = (None, None, None)  # (span, switch times, offsets from them) of local_array

    def _offset_s(self, t_s: float) -> float:
        """The zone's UTC offset at driver time ``t_s``, seconds."""
        return utc_offset_s(self.origin_unix_s + t_s, self.tz)

    def local_s(self, t_s: float) -> float:
        # window starts recur (every model's history has the same ones): one offset lookup per distinct moment
        shift = self._cache.get(t_s)
        if shift is None:
            if len(self._cache) > 1 << 16:
                self._cache.clear()
            shift = self._cache[t_s] = self._offset_s(t_s) + self._base_s
        return t_s + shift

    def local_array(self, t_s) -> np.ndarray:
        # A year of 300 s windows is 105,120 rows per model: one lookup each took 0.4 s per model, so the zone's
        # switches are found on a grid over a span covering every call's rows (models' histories start and end
        # on different days: found in review, a span per model cost 130 ms each), then looked up per row.
        t = np.asarray(t_s, dtype=np.float64).reshape(-1)
        if len(t) == 0:
            return t.copy()
        lo, hi = float(np.nanmin(t)), float(np.nanmax(t))
        span, at, shift = self._switches
        if span is None or lo < span[0] or hi > span[1]:
            span = (lo - 86400.0, hi + 86400.0) if span is None else \
                (min(lo, span[0]) - 86400.0, max(hi, span[1]) + 86400.0)
            grid = np.append(np.arange(span[0], span[1], SWITCH_GRID_S), span[1])
            offs = np.array([self._offset_s(float(g)) for g in grid])
            at, shift = [span[0]], [offs[0]]
            for k in np.nonzero(offs[1:] != offs[:-1])[0]:
                at.append(self._switch_s(float(grid[k]), float(grid[k + 1])))
                shift.append(offs[k + 1])
            at, shift = np.array(at), np.array(shift)
            self._switches = (span, at, shift)
        return t + shift[np.clip(np.searchsorted(at, t, side="right") - 1, 0, None)] + self._base_s

    def _switch_s(self, lo: float, hi: float) -> float:
        """The first second at or before ``hi`` with ``hi``'s offset, after ``lo`` (which has another)."""
        new_s = self._offset_s(hi)
        while hi - lo > 1.0:
            mid = math.floor((lo + hi) / 2)
            if self._offset_s(mid) == new_s:
                hi = mid
            else:
                lo = mid
        return hi

    def repeated(self, t_s: float) -> bool:
        drop_s = self._offset_s(t_s - MAX_SETBACK_S) - self._offset_s(t_s)
        return drop_s > 0 and t_s - self._switch_s(t_s - MAX_SETBACK_S, t_s) < drop_s


def zone_info(zone: str) -> dt.tzinfo | None:
    """The tzinfo of IANA zone ``zone``; None for "" (this machine's local zone, read through the C library, which
    follows TZ and /etc/localtime). A typed error naming the fix if the zone is unknown."""
    if zone == "":
        return None
    try:
        return zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as e:  # OSError: "Europe" is a folder of zones
        raise InvalidArgumentError(f"unknown time zone {zone!r} ({e}): give an IANA name such as 'Europe/Berlin' or "
                                   "'America/New_York', 'UTC', or \"\" for this machine's local zone",
                                   zone=zone) from e


@functools.lru_cache(maxsize=64)
def switch_sizes_s(zone: str, around_day: int, local_names: tuple = (), years: int = 2) -> frozenset[float]:
    """By how many seconds ``zone`` ("" : the local one) moves its clocks, over ``years`` either side of Unix day
    ``around_day`` (read once a day: no zone switches and back within a day). Cached: configs are made often;
    ``local_names`` (``time.tzname`` for "") keys the cache, as TZ may change in a process (``time.tzset``)."""
    tz = zone_info(zone)
    offs = [utc_offset_s((around_day + d) * 86400.0, tz) for d in range(-366 * years, 366 * years + 1)]
    return frozenset(abs(b - a) for a, b in zip(offs, offs[1:]) if a != b)


def check_window_in_zone(window_s: float, zone: str, now_unix_s: float) -> None:
    """Refuse a window that does not divide the zone's clock switches: the live meter closes windows on the
    driver's clock, so after a switch each would straddle two of the zone's windows (found in review: 7200 s
    windows under Berlin's 1 h switch booked a 100-in-flight slot as 55 in two)."""
    zone_info(zone)  # an unknown zone is refused first, by name
    sizes = switch_sizes_s(zone, int(now_unix_s // 86400), () if zone else tuple(time.tzname))
    # within 1e-9 windows, as PolicyConfig checks a day (found in review: 3600 % 3.6 is 3.5999..., refused)
    bad = sorted(s for s in sizes if abs(s / window_s - round(s / window_s)) > 1e-9)
    if bad:
        fits = [d for d in (3600, 1800, 1200, 900, 600, 300, 60) if all(s % d == 0 for s in sizes)]
        raise InvalidArgumentError(
            f"policy window_s {window_s:g} s does not divide the {bad[0]:g} s by which "
            f"{zone or 'this machine' + chr(39) + 's zone'} moves its clocks: after a switch each window would "
            f"straddle two of its windows. Fix: a window_s that divides {bad[0]:g} (e.g. "
            f"{', '.join(f'{d:g}' for d in fits[:4])}), or load_timezone 'UTC'", key="window_s", zone=zone)


def utc_offset_s(t_unix_s: float, tz: dt.tzinfo | None) -> float:
    """UTC offset of ``tz`` (None: the local zone) at Unix time ``t_unix_s``, seconds."""
    if tz is None:
        return float(time.localtime(t_unix_s).tm_gmtoff)
    return dt.datetime.fromtimestamp(t_unix_s, tz).utcoffset().total_seconds()


def zone_midnight(t_unix_s: float, zone: str = "") -> float:
    """Unix time of the midnight in ``zone`` ("" : the local zone) that starts the day of Unix time ``t_unix_s``."""
    tz = zone_info(zone)
    if tz is None:
        lt = time.localtime(t_unix_s)
        return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))
    day = dt.datetime.fromtimestamp(t_unix_s, tz)
    return day.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
