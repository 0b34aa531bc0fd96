"""Per-model load forecasts on fixed windows (PAPER.md §1).

A series is one value per window (the average, or the peak, in-flight concurrency), indexed from t = 0 (a
midnight), so index ``i`` falls in slot ``i % period`` of the day. NaN marks a missing window. Every method is
given as a one-step-ahead function ``f = one_step(method, y, period, start)`` returning an array of
``len(y) + 1`` where ``f[t]`` (for ``t >= start``) uses ``y[:t]`` only; ``f[len(y)]`` is the next forecast.

Methods:
- ``paper``: the slot-of-day prior (mean of the same slot over previous days) plus the weighted mean of the last
  ``n_resid`` residuals, weights 1, 1/2, 1/4, ... normalised over the residuals that exist. A slot with no prior
  (the first day, a new model) falls back to the same weighted mean of the last observations.
- ``holt-winters``: additive level + daily season. statsmodels fits the smoothing parameters and the initial
  state once a day on the last ``fit_days`` days (gaps filled with the prior); the same recursion then runs
  window by window, so each forecast still uses every observation before it. Where no fit can be made (a day
  of fewer than 2 windows, fewer windows than ``min_fit_windows``, or statsmodels refusing the data) the
  paper method stands in for that day (``fit_state``).
- ``last-value``: the last window observed (persistence), the yardstick any forecaster has to beat.
- ``stl``: STL (statsmodels; robust, local-constant season, so a one-off burst stays out of it) splits the last
  ``fit_days`` days into season and the rest once a day; the season repeats the last day, the rest follows simple
  exponential smoothing updated every window.
Missing windows never update a forecaster's state and never count in an error.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import numpy as np

from warmserve.errors import InvalidArgumentError

log = logging.getLogger(__name__)

METHODS = ("paper", "holt-winters", "stl", "last-value")

#: Fewest windows statsmodels' heuristic initialisation accepts (SimpleExpSmoothing, under STL, raises below it;
#: seasonal ExponentialSmoothing wants 2 x (period // 2) more): a fit over fewer falls back to the paper method.
#: With window_s >= 6 h four days hold 16 windows or less, so this, not the two days, decides.
MIN_FIT_WINDOWS = 10


def min_fit_windows(method: str, period: int) -> int:
    """Fewest windows ``method`` is fitted on: two days, and what statsmodels' heuristic start needs."""
    extra = 2 * (period // 2) if method == "holt-winters" else 0
    return max(2 * period, MIN_FIT_WINDOWS + extra)


#: What a fit can raise on data it cannot fit (statsmodels' checks, a singular system): the paper method
#: stands in, as for a day with too little history.
FIT_ERRORS = (ValueError, np.linalg.LinAlgError)


def _weights(n: int) -> np.ndarray:
    return 0.5 ** np.arange(n)


def slot_prior(y: np.ndarray, period: int) -> np.ndarray:
    """prior[t] for t in 0..len(y): mean of y[t - k*period], k >= 1, over the values present (NaN if none)."""
    n = len(y)
    days = (n + 1 + period - 1) // period
    pad = np.full(days * period, np.nan)
    pad[:n] = y
    grid = pad.reshape(days, period)
    ok = ~np.isnan(grid)
    sums = np.cumsum(np.where(ok, grid, 0.0), axis=0)
    cnts = np.cumsum(ok, axis=0)
    prior = np.full((days, period), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        prior[1:] = sums[:-1] / cnts[:-1]
    prior[1:][cnts[:-1] == 0] = np.nan
    return prior.reshape(-1)[: n + 1]


def _weighted_recent(x: np.ndarray, n_back: int) -> np.ndarray:
    """out[t] for t in 0..len(x): weighted mean of x[t-1], x[t-2], ... x[t-n_back] (weights 1, 1/2, ...),
    over the values present; NaN if none."""
    n = len(x)
    num = np.zeros(n + 1)
    den = np.zeros(n + 1)
    for k, w in enumerate(_weights(n_back), start=1):
        if k > n:
            break
        v = x[: n + 1 - k]
        ok = ~np.isnan(v)
        num[k:] += np.where(ok, v * w, 0.0)
        den[k:] += ok * w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def paper_one_step(y: np.ndarray, period: int, start: int = 0, n_resid: int = 10) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    prior = slot_prior(y, period)
    corr = _weighted_recent(y - prior[:-1], n_resid)
    recent = _weighted_recent(y, n_resid)
    f = np.where(np.isnan(prior), recent, prior + np.nan_to_num(corr))
    f[:start] = np.nan
    return np.maximum(f, 0.0)


def paper_next(y: np.ndarray, period: int, n_resid: int = 10) -> float:
    """``paper_one_step(y, period)[len(y)]`` touching only the slots it needs (a plan runs it per model)."""
    n = len(y)

    def prior(t: int) -> float:
        v = y[t % period: t: period]
        v = v[~np.isnan(v)]
        return float(v.mean()) if len(v) else float("nan")

    num = den = 0.0
    rnum = rden = 0.0
    for k, w in enumerate(_weights(min(n_resid, n)), start=1):
        v = y[n - k]
        if np.isnan(v):
            continue
        rnum, rden = rnum + w * v, rden + w
        p = prior(n - k)
        if not np.isnan(p):
            num, den = num + w * (v - p), den + w
    p = prior(n)
    if np.isnan(p):
        return max(rnum / rden, 0.0) if rden > 0 else float("nan")
    return max(p + (num / den if den > 0 else 0.0), 0.0)


def paper_next_batch(Y: np.ndarray, period: int, n_resid: int = 10) -> np.ndarray:
    """``paper_next`` for every row of ``Y`` (models x windows, all the same length) at once."""
    M, n = Y.shape

    def prior(t: int) -> np.ndarray:
        v = Y[:, t % period: t: period]
        ok = ~np.isnan(v)
        c = ok.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, np.where(ok, v, 0.0).sum(axis=1) / np.maximum(c, 1), np.nan)

    num, den, rnum, rden = (np.zeros(M) for _ in range(4))
    for k, w in enumerate(_weights(min(n_resid, n)), start=1):
        v = Y[:, n - k]
        ok = ~np.isnan(v)
        rnum += np.where(ok, w * v, 0.0)
        rden += ok * w
        p = prior(n - k)
        okp = ok & ~np.isnan(p)
        num += np.where(okp, w * (v - p), 0.0)
        den += okp * w
    p = prior(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        recent = np.where(rden > 0, rnum / np.maximum(rden, 1e-300), np.nan)
        corr = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
    return np.maximum(np.where(np.isnan(p), recent, p + corr), 0.0)


def last_value_one_step(y: np.ndarray, start: int = 0) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    f = np.full(len(y) + 1, np.nan)
    ok = ~np.isnan(y)
    idx = np.where(ok, np.arange(len(y)), -1)
    last = np.maximum.accumulate(idx) if len(y) else idx
    f[1:] = np.where(last >= 0, y[np.maximum(last, 0)], np.nan)
    f[:start] = np.nan
    return f


def fill_gaps(y: np.ndarray, period: int) -> np.ndarray:
    """y with missing windows filled: slot prior where one exists, else linear interpolation, else 0."""
    y = np.asarray(y, dtype=np.float64).copy()
    miss = np.isnan(y)
    if not miss.any():
        return y
    prior = slot_prior(y, period)[:-1]
    y[miss] = prior[miss]
    miss = np.isnan(y)
    if miss.any():
        ok = ~miss
        if ok.any():
            y[miss] = np.interp(np.nonzero(miss)[0], np.nonzero(ok)[0], y[ok])
        else:
            y[:] = 0.0
    return y


def _hw_fit(data: np.ndarray, period: int):
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ExponentialSmoothing(data, seasonal="add", seasonal_periods=period,
                                   initialization_method="heuristic").fit()
    return float(res.params["smoothing_level"]), float(res.params["smoothing_seasonal"]), float(res.level[-1]), \
        np.asarray(res.season[-period:], dtype=np.float64)


def _stl_fit(data: np.ndarray, period: int):
    from statsmodels.tsa.holtwinters import SimpleExpSmoothing
    from statsmodels.tsa.seasonal import STL

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # robust, with a local-constant season: found in review, the default (not robust, local-linear over the 4
        # days of each slot) put a one-off 100x burst on the last day into the season (75.8 at its slot), which the
        # level's update subtracted the next day, forecasting a steady load of 1 as 0 for 37 of 42 windows. Robust
        # weights alone do not help (a line through 4 points fits the burst, so it is no outlier); with a constant
        # it is, and is weighted down. 2 inner x (2 + 1) passes cost about 1.2x the default 5 (the default robust
        # 2 x 16 about 6x, and were no more accurate on `warmserve bench forecast`); gaps are filled before
        dec = STL(data, period=period, seasonal_deg=0, robust=True).fit(inner_iter=2, outer_iter=2)
        rest = data - dec.seasonal
        ses = SimpleExpSmoothing(rest, initialization_method="heuristic").fit()
    return float(ses.params["smoothing_level"]), 0.0, float(ses.level[-1]), \
        np.asarray(dec.seasonal[-period:], dtype=np.float64)


_FITS = {"holt-winters": _hw_fit, "stl": _stl_fit}


def fit_runs(method: str, y: np.ndarray, period: int, r: int, fit_days: int) -> bool:
    """Whether ``fit_state`` would fit (call statsmodels) rather than return None at once."""
    lo = max(0, r - fit_days * period)
    return not (period < 2 or r - lo < min_fit_windows(method, period) or np.isnan(y[lo:r]).all())


def fit_state(method: str, y: np.ndarray, period: int, r: int, fit_days: int,
              on_error: Callable[[Exception], None] | None = None):
    """Fit ``method`` on the ``fit_days`` days before index ``r``; None when no fit can be made: a day of fewer
    than 2 windows (no season to fit), fewer than ``min_fit_windows``, no data, or a fit that raised one of
    ``FIT_ERRORS`` or came out non-finite (passed to ``on_error``)."""
    lo = max(0, r - fit_days * period)
    if not fit_runs(method, y, period, r, fit_days):
        return None
    try:
        state = _FITS[method](fill_gaps(y[lo:r], period), period)
        alpha, gamma, level, season = state
        if not (np.isfinite([alpha, gamma, level]).all() and np.isfinite(season).all()):
            raise ValueError(f"{method} fit gave non-finite parameters (alpha {alpha}, gamma {gamma}, "
                             f"level {level})")
    except FIT_ERRORS as e:
        if on_error is not None:
            on_error(e)
        return None
    return state


def run_state(state, y: np.ndarray, period: int, r: int, out: np.ndarray, lo: int, hi: int) -> None:
    """Run a fitted state from index ``r`` and write forecasts for indices [lo, hi) into ``out``."""
    alpha, gamma, level, season = state
    buf = np.empty(period)
    for j in range(period):
        buf[(r - period + j) % period] = season[j]
    n = len(y)
    for t in range(r, hi):
        s = buf[t % period]
        f = level + s
        if t >= lo:
            out[t] = f
        if t < n and not np.isnan(y[t]):
            new_level = alpha * (y[t] - s) + (1 - alpha) * level
            buf[t % period] = gamma * (y[t] - level) + (1 - gamma) * s
            level = new_level


def stat_one_step(method: str, y: np.ndarray, period: int, start: int = 0, fit_days: int = 4,
                  n_resid: int = 10, *, next_step: bool = True, fit=None) -> np.ndarray:
    """Holt-Winters or STL one-step forecasts, refitted at each day boundary (the paper method where a day
    has no fit: see ``fit_state``). ``next_step=False``: no fit for f[len(y)] alone (NaN there), which a backtest
    over [start, len(y)) never reads. ``fit``: stands in for ``fit_state`` (same arguments; a cache)."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    fit = fit_state if fit is None else fit
    out = paper_one_step(y, period, start, n_resid)
    first = (start // period) * period
    for r in range(first, n + 1 if next_step else n, period):
        state = fit(method, y, period, r, fit_days)
        if state is not None:
            run_state(state, y, period, r, out, max(start, r), min(r + period, n + 1))
    out[:start] = np.nan
    out = np.maximum(out, 0.0)
    if not next_step:
        out[n] = np.nan
    return out


def one_step(method: str, y: np.ndarray, period: int, start: int = 0, *, fit_days: int = 4,
             n_resid: int = 10, next_step: bool = True, fit=None) -> np.ndarray:
    """One-step-ahead forecasts of ``y`` by ``method`` (see the module docstring). ``next_step=False``:
    f[len(y)] is NaN (saves a statistical fit where only the backtest is wanted); ``fit``: see
    ``stat_one_step``."""
    if period < 1:
        raise InvalidArgumentError(f"period must be >= 1 window, got {period}", period=period)
    if method == "paper":
        f = paper_one_step(y, period, start, n_resid)
    elif method == "last-value":
        f = last_value_one_step(y, start)
    elif method in _FITS:
        return stat_one_step(method, y, period, start, fit_days, n_resid, next_step=next_step, fit=fit)
    else:
        raise InvalidArgumentError(f"unknown forecast method {method!r}; use one of {METHODS}", method=method)
    if not next_step:
        f[-1] = np.nan
    return f


def mean_relative_error(pred: np.ndarray, actual: np.ndarray) -> float:
    """Mean of |pred - actual| / actual over windows with an actual value > 0 and a prediction."""
    pred, actual = np.asarray(pred, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    ok = ~np.isnan(pred) & ~np.isnan(actual) & (actual > 0)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(pred[ok] - actual[ok]) / actual[ok]))


def select_method(y: np.ndarray, period: int, lo: int, hi: int, methods=METHODS, preds=None, *, fit=None) -> str:
    """The method with the lowest mean relative error on windows [lo, hi) of a rolling-origin backtest
    (ties and no data: the first of ``methods``). ``preds`` may hold precomputed one-step forecasts; ``fit``:
    see ``stat_one_step``."""
    best, best_err = methods[0], np.inf
    for m in methods:
        f = preds[m] if preds is not None else one_step(m, y[:hi], period, lo, next_step=False, fit=fit)
        err = mean_relative_error(f[lo:hi], y[lo:hi])
        if err < best_err:
            best, best_err = m, err
    return best


class OutOfFits(Exception):
    """A tick's fit budget ran out before a fit ``ModelForecaster.predict`` needed (auto's backtest included)."""


class ModelForecaster:
    """Next-window forecasts for one series in a running system: fits refreshed once a day, cached.

    A fit is kept while a later backtest of ``auto`` may ask for it again (the last two days' boundaries) and
    reused there only if the windows it was fitted on are unchanged, so a backtest is ``one_step``'s and a day
    boundary costs ``auto`` two fits, not five (found in review: seven, two of them wasted).
    ``name`` (the model, say) labels the one warning a failing fit logs. ``background``: a
    ``fitting.BackgroundFits`` that makes the day's fits in another process (the live controller's, whose ticks
    run on its event loop); None: they are made here, when ``predict``'s ``may_fit`` allows."""

    def __init__(self, method: str, period: int, *, n_resid: int = 10, fit_days: int = 4, name: str = "",
                 background=None):
        if method not in METHODS + ("auto",):
            # the choices, as the other refusal of a method says them (found in review: none here)
            raise InvalidArgumentError(f"unknown forecast method {method!r}; use one of {METHODS + ('auto',)}",
                                       method=method)
        self.method, self.period, self.n_resid, self.fit_days = method, period, n_resid, fit_days
        self.name = name
        self.background = background
        #: (method, r) -> (the windows fitted on, the fitted state or None)
        self._fits: dict[tuple[str, int], tuple[np.ndarray, object]] = {}
        self._chosen: dict[int, str] = {}
        self._fit_failed = False
        #: The background job for a day's fits: (job id, r); None: none is running.
        self._job: tuple[int, int] | None = None

    def _fit_error(self, e: Exception) -> None:
        if not self._fit_failed:  # once per series: every backtest and every day would fail the same way
            self._fit_failed = True
            log.warning("forecast%s: a %s fit failed (%s: %s) with %d windows a day; the paper method stands in "
                        "where it does (logged once)", f" of {self.name}" if self.name else "", self.method,
                        type(e).__name__, e, self.period)

    def _fit(self, method: str, y: np.ndarray, period: int, r: int, fit_days: int, *, stale_ok: bool = False,
             may_fit: Callable[[], bool] | None = None):
        """``fit_state`` through the cache. ``stale_ok``: reuse a fit at ``r`` even if windows before ``r`` changed
        since (a plan may forecast the next day before the day's last window closed: the day's fit is made
        then, once). ``may_fit``: asked before a fit is made (a cached one is free); False raises ``OutOfFits``.
        ``auto`` is not asked for a fit that cannot run (too little data: None at once), so its pick over a day
        too short for any fit is made at once; the other methods are asked before every day's fit, as before
        ``auto``'s backtest was counted (the simulator's runs with them stay as they were)."""
        data = y[max(0, r - fit_days * period): r]
        hit = self._fits.get((method, r))
        if hit is not None and (stale_ok or np.array_equal(hit[0], data, equal_nan=True)):
            return hit[1]
        if may_fit is not None and (self.method != "auto" or fit_runs(method, y, period, r, fit_days)) \
                and not may_fit():
            raise OutOfFits
        state = fit_state(method, y, period, r, fit_days, self._fit_error)
        self._fits[(method, r)] = (data.copy(), state)
        return state

    def _pick(self, y: np.ndarray, r: int, may_fit: Callable[[], bool] | None = None) -> str:
        """The method for the day from ``r``; ``auto``'s backtest may raise ``OutOfFits`` part-way (its fits made
        so far stay cached, so a later call goes on from there)."""
        if self.method != "auto":
            return self.method
        if r not in self._chosen:  # backtest over the last two days (the bench shows one day is too noisy)
            lo = max(0, r - 2 * self.period)

            def fit(*a, **k):
                return self._fit(*a, may_fit=may_fit, **k)

            self._chosen[r] = select_method(y, self.period, lo, r, fit=fit) \
                if r - lo >= self.period // 2 else "paper"
        return self._chosen[r]

    def fit_day(self, y: np.ndarray, r: int, may_fit: Callable[[], bool] | None = None) -> None:
        """Make the fits a forecast of the day from ``r`` needs (``auto``'s pick and the chosen method's fit)."""
        method = self._pick(y, r, may_fit)
        if method not in ("paper", "last-value"):
            self._fit(method, y, self.period, r, self.fit_days, stale_ok=True, may_fit=may_fit)

    def ready(self, n: int) -> bool:
        """Whether a forecast of y[n] needs no fit (the day's fit, and ``auto``'s pick, are made)."""
        r = (n // self.period) * self.period
        method = self.method if self.method != "auto" else self._chosen.get(r)
        return method in ("paper", "last-value") or (method is not None and (method, r) in self._fits)

    def _in_background(self, y: np.ndarray, r: int) -> None:
        """Adopt the background job's fits once they came; ask for the day's fits where none are being made."""
        if self._job is not None:
            got = self.background.take(self._job[0])
            if got is None:
                if self._job[1] == r:
                    return  # still fitting
                self.background.forget(self._job[0])  # a day that is over: a newer day's fits are wanted
                got = ("lost", "a newer day")
            if got[0] == "ok":
                chosen, fits, errors = got[1]
                if chosen is not None:
                    self._chosen[self._job[1]] = chosen
                self._fits.update(fits)
                for e in errors:
                    self._fit_error(e)
            elif got[0] == "error" and self._job[1] == r:  # a bug, not the data: not asked again for the day
                self._fit_error(RuntimeError(got[1]))
                if self.method == "auto":
                    self._chosen.setdefault(r, "paper")
                else:
                    self._fits.setdefault((self.method, r), (np.empty(0), None))
            self._job = None
        if not self.ready(r) and self.background.available():
            seed = {k: v for k, v in self._fits.items() if r - 2 * self.period <= k[1] <= r}
            self._job = (self.background.submit(self.method, y[:r], self.period, r, self.n_resid, self.fit_days,
                                                seed), r)

    def predict(self, y: np.ndarray, may_fit: Callable[[], bool] | None = None) -> float:
        """Forecast of y[len(y)]; NaN when there is no data at all. ``may_fit``: asked before each fit (``auto``'s
        backtest fits included); False: the paper forecast stands in until a later call may fit. With
        ``background``, no fit is made here: the paper forecast stands in until the background fits came."""
        y = np.asarray(y, dtype=np.float64)
        n = len(y)
        if n == 0 or np.isnan(y).all():
            return float("nan")
        r = (n // self.period) * self.period
        # a backtest at r refits the two day boundaries before r: older fits are not asked for again
        self._fits = {k: v for k, v in self._fits.items() if k[1] >= r - 2 * self.period}
        self._chosen = {k: v for k, v in self._chosen.items() if k >= r - 2 * self.period}  # auto's picks: same days
        if self.background is not None and not self.ready(n):
            self._in_background(y, r)
            if not self.ready(n):
                return paper_next(y, self.period, self.n_resid)
        try:
            method = self._pick(y, r, may_fit)
            state = None
            if method not in ("paper", "last-value"):
                state = self._fit(method, y, self.period, r, self.fit_days, stale_ok=True, may_fit=may_fit)
        except OutOfFits:
            return paper_next(y, self.period, self.n_resid)
        if method == "last-value":
            return float(last_value_one_step(y, n)[n])
        if state is not None:
            out = np.full(n + 1, np.nan)
            run_state(state, y, self.period, r, out, n, n + 1)
            return max(float(out[n]), 0.0)
        return paper_next(y, self.period, self.n_resid)
