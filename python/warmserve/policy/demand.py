"""The load inputs and forecasts of ``core.Policy`` (a mixin, kept apart so that core.py stays readable): windows of
in-flight requests observed or metered from request events, and the (avg, peak) forecasts of a window from the ones
before it."""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from warmserve.policy.fitting import BackgroundFits
from warmserve.policy.forecast import paper_next_batch
from warmserve.policy.history import LiveWindowMeter


#: Statistical fits (``fit_state`` calls, ``auto``'s backtest fits included) one policy tick may make inline.
#: Found in review: with "stl" and 12 models the first tick of a day fitted all 24 series at once, 8-12 s
#: ("auto": 18 s) on the controller's event loop, where workers are lost after 3 s of silence; and ``auto`` made
#: its pick's five fits on one unit of this budget. Until a series is fitted the paper forecast stands in;
#: ``fit_ahead`` goes on with one fit a tick meanwhile. One fit can still take seconds with short windows (STL at
#: 60 s windows: 5-20 s), so the live controller fits in a background process instead (``fit_in_background``).
FITS_PER_TICK = 1


class Demand:
    """Mixed into ``core.Policy``; uses its ``cfg``, ``models``, ``period``, ``_model``, ``_hist``, ``_fc``,
    ``_fc_window``, ``_meters``, ``_inflight`` and ``_exact``."""

    #: When the policy got its first input (a tick or a request event), on the driver's clock; None before.
    _first_input_s: float | None = None
    #: Fits this tick may still make (FITS_PER_TICK at each tick); None: no limit (before the first tick).
    _fits_left: int | None = None
    #: Called with (model, window_start_s, avg, peak) of each window observed, as ``observe_window`` records it: the
    #: live controller's history file (controller/history_record.py). None: windows are kept in memory only.
    window_sink = None

    def fit_in_background(self) -> None:
        """Make the statistical forecasters' fits in a background process, adopted at a later tick (the paper
        forecast standing in meanwhile), not in the tick: for a driver whose ticks share a thread with work that
        must not wait seconds (the live controller's event loop). The simulator does not call it: its fits stay
        inline and its runs deterministic."""
        if not self.cfg.forecast or self.cfg.forecaster == "paper":
            return
        background = BackgroundFits()
        for pair in self._fc.values():
            for fc in pair:
                if fc.background is None:
                    fc.background = background

    def close_fits(self) -> None:
        """End ``fit_in_background``'s process (it also ends with this process, and when the policy is dropped)."""
        for pair in self._fc.values():
            for fc in pair:
                if fc.background is not None:
                    fc.background.close()
                    fc.background = None

    def _may_fit(self) -> bool:
        if self._fits_left is None:
            return True
        if self._fits_left <= 0:
            return False
        self._fits_left -= 1
        return True

    def fit_ahead(self, window: int) -> None:
        """Spend what is left of this tick's fits on the series whose fit for ``window``'s forecast is not made
        yet, so forecasts are the statistical ones a few ticks after a day boundary, not at the plans after."""
        if not self.cfg.forecast or self.cfg.forecaster == "paper" or window <= 0:
            return
        h = self._hist
        h.ensure(window)
        for m in sorted(self.models):
            r = h.index[m]
            if h.known[r] < 0:
                continue
            for fc, series in zip(self._fc[m], (h.avg, h.peak)):
                if self._fits_left is not None and self._fits_left <= 0:
                    return
                if not fc.ready(window):
                    fc.predict(series[r, :window], self._may_fit)

    def observe_window(self, model: str, window_start_s: float, avg_concurrency: float,
                       peak_concurrency: float) -> None:
        """Record one window's time-weighted average and peak in-flight requests (NaN: missing)."""
        self._model(model)
        self._hist.observe(model, window_start_s, avg_concurrency, peak_concurrency)
        if self.window_sink is not None:
            self.window_sink(model, window_start_s, avg_concurrency, peak_concurrency)

    def load_history(self, model: str, window_start_s, avg_concurrency, peak_concurrency) -> None:
        """``observe_window`` for many windows at once (equal-length arrays)."""
        self._model(model)
        self._hist.load(model, window_start_s, avg_concurrency, peak_concurrency)

    def _live_meter(self, model: str, start_s: float) -> LiveWindowMeter:
        """The meter of ``model``'s windows from ``start_s`` on (0 in flight then): the window it starts in is
        averaged over the span from ``start_s`` and merged with the history's value for it, or where the history
        has none, with its forecast (``History.merge_partial``)."""
        return LiveWindowMeter(self.cfg.window_s, start_s, partial(self._merge_partial, model))

    def _merge_partial(self, model: str, window_start_s: float, avg_seen: float, peak_seen: float,
                       seen_s: float) -> tuple[float, float]:
        return self._hist.merge_partial(
            model, window_start_s, avg_seen, peak_seen, seen_s,
            expected=lambda: self.forecast(model, self._hist.index_of(window_start_s)))

    def _meter_set(self, model: str, now_s: float, value: float) -> None:
        if self._first_input_s is None:
            self._first_input_s = now_s
        meter = self._meters.get(model)
        if meter is None:
            # A request event before the first tick: the model was watched (idle, as no event came) since the
            # policy's first input, and not before. A meter made with the new value would book it from the
            # window's start (found in review: one 0.5 s request at the end of a window recorded an average of
            # 1.0 there, 600x the truth); a plain one started now with 0 booked the unwatched part of the window
            # as idle (found in review: 64 in flight for a window's last minute were booked as 12.8 and overwrote
            # the history file's 64 for it, where a tick's meter merges with it).
            meter = self._meters[model] = self._live_meter(model, self._first_input_s)
        for start, avg, peak in meter.set(now_s, value):
            self.observe_window(model, start, avg, peak)

    def on_request_start(self, model: str, now_s: float) -> None:
        """A request of ``model`` arrived (optional; gives exact window peaks)."""
        self._model(model)
        self._exact = True
        self._inflight[model] += 1
        self._meter_set(model, now_s, self._inflight[model])

    def on_request_done(self, model: str, now_s: float) -> None:
        """A request of ``model`` finished or was dropped."""
        self._model(model)
        self._exact = True
        self._inflight[model] = max(0, self._inflight[model] - 1)
        self._meter_set(model, now_s, self._inflight[model])

    def forecast(self, model: str, window_index: int) -> tuple[float, float]:
        """(avg, peak) forecast of window ``window_index`` from the windows before it (NaN: no data)."""
        a, p = self.forecast_all(window_index, [model])
        return float(a[0]), float(p[0])

    def forecast_all(self, window_index: int, models: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(avg, peak) forecasts of window ``window_index`` for ``models`` (default: all, sorted); NaN where a
        model has no data. The peak forecast is never below the average one (a missing peak is the average)."""
        h = self._hist
        names = sorted(self.models) if models is None else models
        rows = np.array([h.index[m] for m in names], dtype=np.int64)
        avg, peak = np.full(len(names), np.nan), np.full(len(names), np.nan)
        known = h.known[rows]
        has = (known >= 0) & (window_index > 0)
        if not has.any():
            return avg, peak
        h.ensure(window_index)
        if not self.cfg.forecast:  # the reactive ablation: the last window seen stands for the next one
            j = np.minimum(known, window_index - 1)
            avg[has], peak[has] = h.avg[rows[has], j[has]], h.peak[rows[has], j[has]]
        elif self.cfg.forecaster == "paper":
            n = self.cfg.residual_windows
            avg[has] = paper_next_batch(h.avg[rows[has], :window_index], self.period, n)
            peak[has] = paper_next_batch(h.peak[rows[has], :window_index], self.period, n)
        else:
            for k in np.nonzero(has)[0]:
                fa, fp = self._fc[names[k]]
                avg[k] = fa.predict(h.avg[rows[k], :window_index], self._may_fit)
                peak[k] = fp.predict(h.peak[rows[k], :window_index], self._may_fit)
        peak = np.fmax(peak, avg)  # fmax takes the known one of the two: found in review, a NaN peak crashed plans
        return avg, peak

    def forecast_need(self, window: int) -> tuple[int, dict[str, float]]:
        """GPUs the models with demand in ``window`` need for one instance each (a model with no forecast counts:
        nothing says it is idle), and each model's weight in a colocation: its forecast peak in flight, the
        history's mean peak where there is no forecast, at least 1 (a model laid out at all holds a request)."""
        names = sorted(self.models)
        f_avg, f_peak = self.forecast_all(window, names)
        mean = self._hist.mean_peak()
        need = sum(self.models[m].tp for m, a in zip(names, f_avg) if not a <= 0)
        demand = {m: max(1.0, mean[m] if math.isnan(p) else float(p)) for m, p in zip(names, f_peak)}
        return need, demand

    def window_of(self, now_s: float) -> int:
        """The index of the history window (of the day the load follows: ``History.calendar``) holding ``now_s``."""
        return math.floor(self._hist.calendar.local_s(now_s) / self.cfg.window_s)

    def _window_forecast(self, now_s: float) -> dict[str, float]:
        """The average in-flight forecast of the current window per model (0 where unknown), once per window."""
        w = self.window_of(now_s)
        if self._fc_window is None or self._fc_window[0] != w:
            names = sorted(self.models)
            avg = self.forecast_all(w, names)[0]
            self._fc_window = (w, {m: float(a) for m, a in zip(names, avg) if not math.isnan(a)})
        return self._fc_window[1]
