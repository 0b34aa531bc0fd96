"""The forecast history: per model and window, the time-weighted average and peak of in-flight requests, and the
live meter that feeds it from a (re)start on."""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from warmserve.errors import InvalidArgumentError
from warmserve.policy.calendar import Calendar
from warmserve.policy.concurrency import WindowMeter

log = logging.getLogger(__name__)


#: Most requests in flight for one model that a load history may state. The policy plans one candidate per
#: B requests (planner.replica_counts): 1e8 in a file written in the wrong unit took 17 s and 1.6 GB per tick, and
#: 1.7e308 overflowed the forecast to inf (found in review). A million in flight is past any cluster's engines.
MAX_HISTORY_LOAD = 1e6

#: Least part of a window a live meter must have measured for that span to stand for the whole window where the
#: history knows nothing of it; under it, the window's forecast stands for the part not measured
#: (``History.merge_partial``). Found in CI: a cluster started 5 s before a window's end, idle while its workers
#: came up, booked 0 in flight for the window its history file did not reach yet, and the next window's forecast
#: peak of a model the file showed bursting to 64 fell to 32 (one prewarm planned, not two). From half a window
#: on, the span measured is most of the window.
MIN_SEEN_FRACTION = 0.5


def impossible_loads(avg: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Per window, whether its load is no load at all: infinite, negative or past MAX_HISTORY_LOAD (NaN is a
    window with no data)."""
    return ~(np.isnan(avg) | ((avg >= 0) & (avg <= MAX_HISTORY_LOAD))) \
        | ~(np.isnan(peak) | ((peak >= 0) & (peak <= MAX_HISTORY_LOAD)))


class History:
    """Average and peak per model and window index (a models x windows matrix), NaN where missing. Window i
    starts ``i * window_s`` after the origin's midnight on the wall clock of ``calendar`` (default: days of 86400 s
    of the driver's clock), so a slot of the day stays the same hour across daylight-saving switches."""

    def __init__(self, names: list[str], window_s: float, calendar: Calendar | None = None):
        self.window_s = window_s
        self.calendar = calendar or Calendar()
        self.index = {m: i for i, m in enumerate(names)}
        self.avg = np.full((len(names), 0), np.nan)
        self.peak = np.full((len(names), 0), np.nan)
        self.known = np.full(len(names), -1)  # highest window index observed per model

    def ensure(self, n: int) -> None:
        """Room for windows 0..n-1 (grown by doubling, so appending window by window stays cheap)."""
        if n > self.avg.shape[1]:
            cap = max(n, 2 * self.avg.shape[1])
            for name in ("avg", "peak"):
                old = getattr(self, name)
                a = np.full((old.shape[0], cap), np.nan)
                a[:, : old.shape[1]] = old
                setattr(self, name, a)

    def set(self, model: str, i: int, avg: float, peak: float) -> None:
        self.ensure(i + 1)
        r = self.index[model]
        self.avg[r, i], self.peak[r, i] = avg, peak
        self.known[r] = max(self.known[r], i)

    def index_of(self, window_start_s: float) -> int:
        """The index of the window that starts at ``window_start_s`` on the driver's clock."""
        return math.floor(self.calendar.local_s(window_start_s) / self.window_s + 1e-9)

    def observe(self, model: str, window_start_s: float, avg: float, peak: float) -> None:
        """One window of ``model`` that starts at ``window_start_s`` (>= 0 on the driver's clock). In the hour a
        fall-back switch repeats, the window's two hours are merged (mean of the averages, max of the peaks). An
        infinite, negative or implausible load is recorded as missing, with a warning: found in review, one inf
        window made every method's next forecast inf (an inf forecast crashed ticks: see ``load``), and a live
        window is not worth stopping the loop for."""
        if impossible_loads(np.array([avg], float), np.array([peak], float))[0]:
            log.warning("history of %r: window at %.0f s has an impossible load (avg %s, peak %s): recorded as "
                        "missing (loads are in-flight requests, 0..%g)", model, window_start_s, avg, peak,
                        MAX_HISTORY_LOAD)
            avg = peak = math.nan
        i = self.index_of(window_start_s)
        if i < 0:
            raise InvalidArgumentError(f"window_start_s must be >= 0, got {window_start_s}")
        if self.calendar.repeated(window_start_s) and i < self.avg.shape[1]:
            r = self.index[model]
            if not math.isnan(self.avg[r, i]):  # the first pass's, an hour before: a missing second one keeps it
                avg, peak = float(np.nanmean([self.avg[r, i], avg])), float(np.fmax(self.peak[r, i], peak))
        self.set(model, i, avg, peak)

    def load(self, model: str, window_start_s, avg, peak) -> None:
        """``observe`` for many windows at once (equal-length arrays). Rows finer than the window (a 60 s file
        under 300 s windows) are aggregated per window: the mean of their averages (rows taken as equal spans)
        and the max of their peaks, NaN rows left out. A row coarser than the window fills its first window
        only (``controller.clock.history_on_clock`` warns of such a file)."""
        starts, avg, peak = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (window_start_s, avg, peak))
        if not (len(starts) == len(avg) == len(peak)):
            raise InvalidArgumentError(
                f"history of {model!r}: {len(starts)} starts, {len(avg)} averages and {len(peak)} peaks differ")
        if len(starts) == 0:
            return
        # NaN is a window with no data; inf or a negative load is no load at all (found in review: an inf
        # forecast crashed every tick in its time slot, day after day)
        bad = ~np.isfinite(starts) | impossible_loads(avg, peak)
        if bad.any():
            k = int(np.argmax(bad))
            raise InvalidArgumentError(
                f"history of {model!r}: {int(bad.sum())} window(s) with a start that is not a number or an avg or "
                f"peak that is infinite, negative or past {MAX_HISTORY_LOAD:g}, e.g. window_start_s {starts[k]}, "
                f"avg {avg[k]}, peak {peak[k]}: loads are in-flight requests (>= 0; NaN where unknown)",
                model=model, bad_windows=int(bad.sum()))
        # a repeated hour (fall-back switch) lands on the same windows twice: merged as rows finer than a window
        idx = np.floor(self.calendar.local_array(starts) / self.window_s + 1e-9).astype(np.int64)
        if idx.min() < 0:
            raise InvalidArgumentError(f"history of {model!r}: window starts must be >= 0, got {starts.min()}")
        uniq, inv = np.unique(idx, return_inverse=True)
        if len(uniq) < len(idx):
            ok = ~np.isnan(avg)
            cnt = np.bincount(inv, weights=ok, minlength=len(uniq))
            tot = np.bincount(inv, weights=np.where(ok, avg, 0.0), minlength=len(uniq))
            with np.errstate(invalid="ignore", divide="ignore"):
                avg = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
            top = np.full(len(uniq), np.nan)
            np.fmax.at(top, inv, peak)
            idx, peak = uniq, top
        self.ensure(int(idx.max()) + 1)
        r = self.index[model]
        self.avg[r, idx], self.peak[r, idx] = avg, peak
        self.known[r] = max(self.known[r], int(idx.max()))

    def merge_partial(self, model: str, window_start_s: float, avg_seen: float, peak_seen: float,
                      seen_s: float, expected: Callable[[], tuple[float, float]] | None = None) -> tuple[float, float]:
        """The (avg, peak) to record for the window from ``window_start_s`` (driver's clock) of which only the last
        ``seen_s`` seconds were measured (the meter started mid-window), averaging ``avg_seen`` there. With a value
        for the window (the history file of the deployment before a restart), it stands for the span not
        measured: avg = known x (1 - f) + avg_seen x f, f = seen_s / window_s, and the peak is the larger, so a
        restart neither drops the window's load nor discards what the file knew of it. With none, the measured span
        stands for the window if it is at least MIN_SEEN_FRACTION of it; a shorter one is merged the same way
        with the (avg, peak) ``expected`` returns (the window's forecast), where there is one."""
        r, i = self.index[model], self.index_of(window_start_s)
        old_avg = self.avg[r, i] if 0 <= i < self.avg.shape[1] else math.nan
        old_peak = self.peak[r, i] if 0 <= i < self.peak.shape[1] else math.nan
        # in a repeated hour the value is the first pass's, an hour before: ``observe`` merges the two (found in
        # review: taken here for the unmeasured part too, the first pass counted twice)
        if self.calendar.repeated(window_start_s):
            return avg_seen, peak_seen
        f = min(max(seen_s / self.window_s, 0.0), 1.0)
        if math.isnan(old_avg) and expected is not None and f < MIN_SEEN_FRACTION:
            old_avg, old_peak = expected()
        if math.isnan(old_avg):
            return avg_seen, peak_seen
        return old_avg * (1.0 - f) + avg_seen * f, float(np.fmax(old_peak, peak_seen))

    def span_windows(self) -> int:
        """Windows from the first to the last for which some model's load is known (0: none): how far back the
        history reaches, whatever its gaps (a daily forecast has a prior once it reaches a day back)."""
        if not self.avg.size:
            return 0
        seen = np.nonzero(~np.isnan(self.avg).all(axis=0))[0]
        return int(seen[-1] - seen[0] + 1) if len(seen) else 0

    def mean_peak(self) -> dict[str, float]:
        """Mean peak over all known windows per model, 1 where there is none (how static layouts share GPUs)."""
        out = {}
        for m, r in self.index.items():
            v = self.peak[r]
            v = v[~np.isnan(v)]
            out[m] = float(v.mean()) if len(v) and v.mean() > 0 else 1.0
        return out


class LiveWindowMeter(WindowMeter):
    """A ``WindowMeter`` that knows when it started: the window it starts in is measured from then only, so its
    average is taken over that span and handed to ``merge`` (``History.merge_partial`` for one model) rather than
    divided by the whole window (found in review: a restart 4 minutes into a window booked 64 in flight as
    12.8 and overwrote the history file's 64 for it, and the next forecasts fell 40%). It starts at 0 in
    flight (nothing is known before it)."""

    def __init__(self, window_s: float, now_s: float,
                 merge: Callable[[float, float, float, float], tuple[float, float]]):
        super().__init__(window_s, now_s, 0.0)
        self._started_s: float | None = now_s
        self._merge = merge

    def advance(self, now_s: float) -> list[tuple[float, float, float]]:
        closed = super().advance(now_s)
        if closed and self._started_s is not None:
            start_s, avg, peak = closed[0]
            seen_s = start_s + self.window_s - self._started_s
            if 0.0 < seen_s < self.window_s:
                closed[0] = (start_s, *self._merge(start_s, avg * self.window_s / seen_s, peak, seen_s))
            self._started_s = None
        return closed
