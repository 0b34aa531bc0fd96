"""In-flight load per window: what the forecasts observe (time-weighted average and peak concurrency)."""

from __future__ import annotations

import math

import numpy as np

from warmserve.errors import InvalidArgumentError


def concurrency_windows(start_s: np.ndarray, end_s: np.ndarray, t0_s: float, t1_s: float,
                        window_s: float = 300.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows tiling [t0_s, t1_s): (window starts, time-weighted average in-flight, peak in-flight). A last
    window cut short by t1_s averages over its part before t1_s.

    ``start_s``/``end_s``: when each request entered and left the system (arrival and completion).
    """
    if not (math.isfinite(window_s) and window_s > 0 and math.isfinite(t0_s) and math.isfinite(t1_s)):
        # found in review: window_s 0 raised a bare OverflowError (inf windows), NaN ends a ValueError
        raise InvalidArgumentError(f"concurrency_windows needs a finite window_s > 0 and finite t0_s, t1_s, got "
                                   f"window_s={window_s!r}, t0_s={t0_s!r}, t1_s={t1_s!r} (300 s: the policy's "
                                   f"window_s)", window_s=window_s)
    nw = max(int(np.ceil((t1_s - t0_s) / window_s - 1e-9)), 0)
    starts = t0_s + window_s * np.arange(nw)
    if nw == 0:
        return starts, np.zeros(0), np.zeros(0)
    start_s = np.asarray(start_s, np.float64)
    end_s = np.maximum(np.asarray(end_s, np.float64), start_s)
    # breakpoints: every arrival (+1), every departure (-1), every window boundary and t1_s (0): the last window
    # may end at t1_s, before a whole window_s
    bounds = np.append(t0_s + window_s * np.arange(nw), t1_s)
    t = np.concatenate([start_s, end_s, bounds])
    d = np.concatenate([np.ones(len(start_s)), -np.ones(len(end_s)), np.zeros(nw + 1)])
    # at equal times: arrivals before departures (a peak counts both), and both before a window boundary, whose
    # segment takes the level once they are done. A departure on a boundary goes first of all: the request is not
    # in flight in the window that starts there (found in review: a request in flight over [0, 100) made the peak
    # of [100, 200) 1 where its average was 0); a zero-length request there still counts, as inside a window. The
    # order at one time moves only zero-length segments: averages are as before
    on_bound = np.isin(end_s, bounds) & (end_s > start_s)
    rank = np.concatenate([np.ones(len(start_s)), np.where(on_bound, 0.0, 2.0), np.full(nw + 1, 3.0)])
    order = np.lexsort((rank, t))
    t, d, rank = t[order], d[order], rank[order]
    level = np.cumsum(d)
    # time-weighted area: level holds from t[k] to t[k+1]
    seg_t0 = t[:-1]
    seg_len = np.diff(t)
    seg_lvl = level[:-1]
    inside = (seg_t0 >= t0_s) & (seg_t0 < t1_s)
    w = np.floor((seg_t0[inside] - t0_s) / window_s).astype(np.int64)
    w = np.clip(w, 0, nw - 1)
    area = np.bincount(w, weights=seg_lvl[inside] * seg_len[inside], minlength=nw)
    peak = np.zeros(nw)
    # nor the level between two such departures (found in review: two requests ending on a boundary made the
    # next window's peak 1): a zero-length segment followed by a boundary departure is no level of that window
    between = (seg_len == 0) & (rank[1:] == 0)
    np.maximum.at(peak, w, np.where(between[inside], 0.0, seg_lvl[inside]))
    length = np.minimum(starts + window_s, t1_s) - starts
    return starts, area / length, peak
