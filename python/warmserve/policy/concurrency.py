"""In-flight concurrency per window: from a request trace, and live from start/finish events."""

from __future__ import annotations

import math

import numpy as np

from warmserve.errors import InvalidArgumentError


def request_durations(output_tokens, prefill_s: float, decode_s_per_token: float) -> np.ndarray:
    """How long each request stays in flight: one prefill plus one decode step per output token, seconds."""
    out = np.asarray(output_tokens, dtype=np.float64)
    return prefill_s + out * decode_s_per_token


def concurrency_series(arrivals_s, durations_s, window_s: float, t0_s: float = 0.0,
                       n_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted average and peak in-flight requests per window [t0 + i*w, t0 + (i+1)*w).

    A request is in flight over [arrival, arrival + duration). Exact: the in-flight count is a step function
    and both numbers are computed from its steps."""
    a = np.asarray(arrivals_s, dtype=np.float64)
    d = np.asarray(durations_s, dtype=np.float64)
    if a.shape != d.shape:
        raise InvalidArgumentError(f"{len(a)} arrivals but {len(d)} durations", n_arrivals=len(a), n_durations=len(d))
    if window_s <= 0:
        raise InvalidArgumentError(f"window_s must be > 0, got {window_s}", window_s=window_s)
    if (d < 0).any():
        i = int(np.argmax(d < 0))
        raise InvalidArgumentError(f"durations must be >= 0 seconds: durations_s[{i}] = {float(d[i])!r} (of {len(d)}); "
                                   "fix: pass each request's time in flight, its end minus its arrival", index=i)
    if n_windows is None:
        end = float((a + d).max()) if len(a) else t0_s
        n_windows = max(1, math.ceil((end - t0_s) / window_s))
    edges = t0_s + window_s * np.arange(n_windows + 1)
    # Events, with window edges as zero-size events so each step lies in one window and every window sees the
    # level it opens with; ends sort before starts at the same instant (a request that ends as another begins
    # does not overlap it).
    times = np.concatenate([a + d, a, edges])
    deltas = np.concatenate([-np.ones(len(a)), np.ones(len(a)), np.zeros(len(edges))])
    kind = np.concatenate([np.zeros(len(a)), np.full(len(a), 2), np.ones(len(edges))])
    order = np.lexsort((kind, times))
    times, deltas = times[order], deltas[order]
    level = np.cumsum(deltas)  # in flight just after each event
    widths = np.diff(times, append=times[-1])
    win = np.floor((times - t0_s) / window_s).astype(np.int64)
    inside = (win >= 0) & (win < n_windows)
    avg = np.bincount(win[inside], weights=(level * widths)[inside], minlength=n_windows)[:n_windows] / window_s
    peak = np.zeros(n_windows)
    np.maximum.at(peak, win[inside], level[inside])
    return avg, peak


class WindowMeter:
    """Average and peak of a step function (in-flight requests) per window, fed as it changes."""

    def __init__(self, window_s: float, now_s: float, value: float = 0.0):
        self.window_s = window_s
        self.index = math.floor(now_s / window_s)
        self.last_s = now_s
        self.value = value
        self.area = value * (now_s - self.index * window_s)
        self.peak = value

    def advance(self, now_s: float) -> list[tuple[float, float, float]]:
        """Move to ``now_s``; returns the windows that closed as (window_start_s, avg, peak)."""
        closed = []
        now_s = max(now_s, self.last_s)
        while now_s >= (self.index + 1) * self.window_s:
            end = (self.index + 1) * self.window_s
            self.area += self.value * (end - self.last_s)
            closed.append((self.index * self.window_s, self.area / self.window_s, self.peak))
            self.index += 1
            self.last_s, self.area, self.peak = end, 0.0, self.value
        self.area += self.value * (now_s - self.last_s)
        self.last_s = now_s
        return closed

    def set(self, now_s: float, value: float) -> list[tuple[float, float, float]]:
        if self.last_s <= now_s < (self.index + 1) * self.window_s:
            # within the current window (nearly every call: one per request start and end): ``advance``'s own
            # arithmetic without its calls and list, and max() by its own comparison; they were 10% of a
            # simulated run
            self.area += self.value * (now_s - self.last_s)
            self.last_s = now_s
            self.value = value
            if value > self.peak:
                self.peak = value
            return []
        closed = self.advance(now_s)
        self.value = value
        self.peak = max(self.peak, value)
        return closed
