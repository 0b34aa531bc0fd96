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
  window by window, so each forecast still uses every observation before it.
- ``last-value``: the last window observed (persistence), the yardstick any forecaster has to beat.
- ``stl``: STL (statsmodels) splits the last ``fit_days`` days into season and the rest once a day; the season
  repeats the last day, the rest follows simple exponential smoothing updated every window.
Missing windows never update a forecaster's state and never count in an error.
"""

from __future__ import annotations

import warnings

import numpy as np

from warmserve.errors import InvalidArgumentError

METHODS = ("paper", "holt-winters", "stl", "last-value")


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
        dec = STL(data, period=period).fit()  # gaps are filled before: the robust pass would cost 6x
        rest = data - dec.seasonal
        ses = SimpleExpSmoothing(rest, initialization_method="heuristic").fit()
    return float(ses.params["smoothing_level"]), 0.0, float(ses.level[-1]), \
        np.asarray(dec.seasonal[-period:], dtype=np.float64)


_FITS = {"holt-winters": _hw_fit, "stl": _stl_fit}


def fit_state(method: str, y: np.ndarray, period: int, r: int, fit_days: int):
    """Fit ``method`` on the ``fit_days`` days before index ``r``; None when there are fewer than two days."""
    lo = max(0, r - fit_days * period)
    if r - lo < 2 * period or np.isnan(y[lo:r]).all():
        return None
    return _FITS[method](fill_gaps(y[lo:r], period), period)


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
                  n_resid: int = 10) -> np.ndarray:
    """Holt-Winters or STL one-step forecasts, refitted at each day boundary (the paper method where a day
    has less than two days of history behind it)."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    out = paper_one_step(y, period, start, n_resid)
    first = (start // period) * period
    for r in range(first, n + 1, period):
        state = fit_state(method, y, period, r, fit_days)
        if state is not None:
            run_state(state, y, period, r, out, max(start, r), min(r + period, n + 1))
    out[:start] = np.nan
    return np.maximum(out, 0.0)


def one_step(method: str, y: np.ndarray, period: int, start: int = 0, *, fit_days: int = 4,
             n_resid: int = 10) -> np.ndarray:
    """One-step-ahead forecasts of ``y`` by ``method`` (see the module docstring)."""
    if period < 1:
        raise InvalidArgumentError(f"period must be >= 1 window, got {period}", period=period)
    if method == "paper":
        return paper_one_step(y, period, start, n_resid)
    if method == "last-value":
        return last_value_one_step(y, start)
    if method in _FITS:
        return stat_one_step(method, y, period, start, fit_days, n_resid)
    raise InvalidArgumentError(f"unknown forecast method {method!r}; use one of {METHODS}", method=method)


def mean_relative_error(pred: np.ndarray, actual: np.ndarray) -> float:
    """Mean of |pred - actual| / actual over windows with an actual value > 0 and a prediction."""
    pred, actual = np.asarray(pred, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    ok = ~np.isnan(pred) & ~np.isnan(actual) & (actual > 0)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(pred[ok] - actual[ok]) / actual[ok]))


def select_method(y: np.ndarray, period: int, lo: int, hi: int, methods=METHODS, preds=None) -> str:
    """The method with the lowest mean relative error on windows [lo, hi) of a rolling-origin backtest
    (ties and no data: the first of ``methods``). ``preds`` may hold precomputed one-step forecasts."""
    best, best_err = methods[0], np.inf
    for m in methods:
        f = preds[m] if preds is not None else one_step(m, y[:hi], period, lo)
        err = mean_relative_error(f[lo:hi], y[lo:hi])
        if err < best_err:
            best, best_err = m, err
    return best


class ModelForecaster:
    """Next-window forecasts for one series in a running system: fits refreshed once a day, cached."""

    def __init__(self, method: str, period: int, *, n_resid: int = 10, fit_days: int = 4):
        if method not in METHODS + ("auto",):
            raise InvalidArgumentError(f"unknown forecast method {method!r}", method=method)
        self.method, self.period, self.n_resid, self.fit_days = method, period, n_resid, fit_days
        self._fits: dict[tuple[str, int], object] = {}
        self._chosen: dict[int, str] = {}

    def _pick(self, y: np.ndarray, r: int) -> str:
        if self.method != "auto":
            return self.method
        if r not in self._chosen:  # backtest over the last two days (the bench shows one day is too noisy)
            lo = max(0, r - 2 * self.period)
            self._chosen[r] = select_method(y, self.period, lo, r) if r - lo >= self.period // 2 else "paper"
        return self._chosen[r]

    def predict(self, y: np.ndarray) -> float:
        """Forecast of y[len(y)]; NaN when there is no data at all."""
        y = np.asarray(y, dtype=np.float64)
        n = len(y)
        if n == 0 or np.isnan(y).all():
            return float("nan")
        r = (n // self.period) * self.period
        method = self._pick(y, r)
        if method == "last-value":
            return float(last_value_one_step(y, n)[n])
        if method != "paper":
            key = (method, r)
            if key not in self._fits:
                self._fits = {k: v for k, v in self._fits.items() if k[1] == r}
                self._fits[key] = fit_state(method, y, self.period, r, self.fit_days)
            state = self._fits[key]
            if state is not None:
                out = np.full(n + 1, np.nan)
                run_state(state, y, self.period, r, out, n, n + 1)
                return max(float(out[n]), 0.0)
        return paper_next(y, self.period, self.n_resid)
