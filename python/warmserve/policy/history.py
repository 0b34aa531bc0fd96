"""The forecast history: per model and window, the time-weighted average and peak of in-flight requests."""

from __future__ import annotations

import math

import numpy as np

from warmserve.errors import InvalidArgumentError


class History:
    """Average and peak per model and window index (a models x windows matrix), NaN where missing. Window i
    starts at ``i * window_s`` on the driver's clock."""

    def __init__(self, names: list[str], window_s: float):
        self.window_s = window_s
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

    def observe(self, model: str, window_start_s: float, avg: float, peak: float) -> None:
        """One window of ``model`` that starts at ``window_start_s`` (>= 0)."""
        i = math.floor(window_start_s / self.window_s + 1e-9)
        if i < 0:
            raise InvalidArgumentError(f"window_start_s must be >= 0, got {window_start_s}")
        self.set(model, i, avg, peak)

    def load(self, model: str, window_start_s, avg, peak) -> None:
        """``observe`` for many windows at once (equal-length arrays)."""
        starts, avg, peak = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (window_start_s, avg, peak))
        if not (len(starts) == len(avg) == len(peak)):
            raise InvalidArgumentError(
                f"history of {model!r}: {len(starts)} starts, {len(avg)} averages and {len(peak)} peaks differ")
        if len(starts) == 0:
            return
        idx = np.floor(starts / self.window_s + 1e-9).astype(np.int64)
        if idx.min() < 0:
            raise InvalidArgumentError(f"history of {model!r}: window starts must be >= 0, got {starts.min()}")
        self.ensure(int(idx.max()) + 1)
        r = self.index[model]
        self.avg[r, idx], self.peak[r, idx] = avg, peak
        self.known[r] = max(self.known[r], int(idx.max()))

    def mean_peak(self) -> dict[str, float]:
        """Mean peak over all known windows per model, 1 where there is none (how static layouts share GPUs)."""
        out = {}
        for m, r in self.index.items():
            v = self.peak[r]
            v = v[~np.isnan(v)]
            out[m] = float(v.mean()) if len(v) and v.mean() > 0 else 1.0
        return out
