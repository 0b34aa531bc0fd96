"""ServeGen (Xiang et al., "ServeGen", arXiv:2505.09999; Apache-2.0): Alibaba Bailian's per-model and per-client
10-minute arrival rates over 14 days, with fitted inter-arrival distributions and token-length PMFs.

Arrivals are generated as ServeGen does: in each 10-minute window a client with rate r sends n = r x 600
requests whose inter-arrival times (n + 1 of them: the last runs from the last request to the window's end) are
drawn from the window's fitted Gamma or Weibull and rescaled so that they fill the window. The package vendors
the largest clients of each model; pass ``path=`` to use the full ``servegen_client_windows.csv.gz``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import os
from dataclasses import dataclass

import numpy as np

from warmserve.errors import InvalidArgumentError
from warmserve.workload.data import (check_header, check_row, checked_rows, data_path, file_key, gz_errors,
                                     open_text)

WINDOW_S = 600.0
LANGUAGE_MODELS = ("m-large", "m-mid", "m-small")
#: the inter-arrival fits ServeGen publishes (SOURCES.md); ``sample_arrivals`` has a sampler for these only
PATTERNS = ("Gamma", "Weibull")
#: the longest token length a trace holds (``request.Trace`` stores lengths as int32)
MAX_TOKENS = 2**31 - 1
_FIX = "fix that row, or derive the file again with derive_servegen.py"


@contextlib.contextmanager
def _open(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"ServeGen file {path} not found: pass path= to a file derived by "
                                f"derive_servegen.py, or reinstall warmserve (its data folder holds the defaults)")
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") was read as part of the first column's name (found in review)
    with gz_errors(path, "ServeGen file", "derive the file again with derive_servegen.py"), open_text(path) as f:
        yield f


def _header(path: str, reader: csv.DictReader, need: tuple[str, ...], what: str) -> None:
    check_header(path, reader, need, what, "as derive_servegen.py writes it")


def _bad_cell(path: str, what: str, line: int, row: dict, cells) -> InvalidArgumentError:
    """The error for the first cell of ``row`` that its parser refuses; ``cells``: (column, parser, what it must be)."""
    for col, parse, want in cells:
        v = row.get(col)
        if v is None:
            return InvalidArgumentError(f"{what} {path}, line {line}: no {col} cell (the row is shorter than the "
                                        f"header): {_FIX}", path=path, line=line, column=col)
        try:
            parse(v)
        except ValueError:
            return InvalidArgumentError(f"{what} {path}, line {line}, column {col}: {v!r} is not {want}: {_FIX}",
                                        path=path, line=line, column=col, value=v)
    raise AssertionError("every cell parsed")


def _refuse(path: str, what: str, lines: np.ndarray, bad: np.ndarray, col: str, values: np.ndarray,
            want: str) -> None:
    """Raise for the first row where ``bad`` holds (rows in the order of ``lines``, their line numbers)."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidArgumentError(f"{what} {path}, line {int(lines[i])}, column {col}: {values[i].item()!r} is not "
                                   f"{want} ({int(bad.sum())} such rows): {_FIX}", path=path, line=int(lines[i]),
                                   column=col)


@dataclass
class ClientWindows:
    """One ServeGen series: windows with traffic, each with rate, fitted IAT pattern and its parameters."""

    model: str
    client_id: int  # -1 for a model's aggregate
    t_s: np.ndarray  # window start, seconds from the data's midnight
    rate_rps: np.ndarray
    cv: np.ndarray
    is_gamma: np.ndarray  # bool: Gamma fit; otherwise Weibull
    shape: np.ndarray
    scale: np.ndarray
    #: this series replays the client's data shifted this many days later (0: as published)
    day_shift: int = 0

    @property
    def name(self) -> str:
        base = self.model if self.client_id < 0 else f"{self.model}.c{self.client_id}"
        return base + (f".d{self.day_shift}" if self.day_shift else "")

    def total_requests(self) -> float:
        return float(self.rate_rps.sum() * WINDOW_S)


def load_client_windows(path: str | None = None, models: tuple[str, ...] | None = None) -> dict[str, ClientWindows]:
    """Per-client series keyed by ``model.cCLIENT``; default: the vendored extract (largest clients).
    The arrays are shared between calls (cached): do not modify them."""
    return dict(_client_windows(file_key(os.path.abspath(path or data_path("servegen_client_windows_top.csv.gz"))),
                                tuple(models) if models else None))


_CW = "ServeGen client windows"
_CW_COLUMNS = ("model", "client_id", "t_s", "rate_rps", "cv", "pattern", "param1", "param2")
_CW_CELLS = (("client_id", int, "a client id (a whole number)"), ("t_s", int, "a window start (whole seconds)"),
             ("rate_rps", float, "a rate (a number of requests/s)"), ("cv", float, "a number"),
             ("param1", float, "a shape (a number)"), ("param2", float, "a scale (a number)"))


@functools.lru_cache(maxsize=4)
def _client_windows(key: tuple, models: tuple[str, ...] | None) -> dict[str, ClientWindows]:
    path = key[0]  # key: data.file_key, so that an edited file is read again
    # found in review: bad rows raised bare int()/KeyError errors, or were sampled silently wrong (a negative or
    # NaN rate as no requests, an unknown pattern as Weibull, a repeated window twice): each is refused, by line
    cols: dict[tuple[str, int], list] = {}
    n_rows = 0
    with _open(path) as f:
        reader = csv.DictReader(f)
        _header(path, reader, _CW_COLUMNS, _CW)
        pos = {c: i for i, c in enumerate(reader.fieldnames)}  # a repeated column: its last cell, as DictReader
        i_model, i_client, i_t, i_rate, i_cv, i_pat, i_p1, i_p2 = (pos[c] for c in _CW_COLUMNS)
        for r in checked_rows(path, reader, _CW_COLUMNS, _CW, _FIX):
            n_rows += 1
            if models and r[i_model] not in models:
                continue
            pat = r[i_pat]
            if not pat:  # a window without a fit: no traffic (derive_servegen.py)
                continue
            if pat != "Gamma" and pat != "Weibull":
                raise InvalidArgumentError(f"{_CW} {path}, line {reader.line_num}, column pattern: {pat!r} is not "
                                           f"one of {', '.join(PATTERNS)} (the fits ServeGen publishes): {_FIX}",
                                           path=path, line=reader.line_num, column="pattern")
            try:
                cols.setdefault((r[i_model], int(r[i_client])), []).append(
                    (int(r[i_t]), float(r[i_rate]), float(r[i_cv]), pat == "Gamma",
                     float(r[i_p1]), float(r[i_p2]), reader.line_num))
            except (TypeError, ValueError):
                raise _bad_cell(path, _CW, reader.line_num, dict(zip(reader.fieldnames, r)), _CW_CELLS) from None
    if not n_rows:
        raise InvalidArgumentError(f"{_CW} {path} has a header but no window: give the derived file "
                                   f"servegen_client_windows.csv(.gz), or leave path unset for the vendored one",
                                   path=path)
    spans = data_spans()
    out = {}
    for (model, cid), rows in cols.items():
        rows.sort()
        a = list(zip(*rows))
        cw = ClientWindows(model, cid, np.array(a[0], np.float64), np.array(a[1]), np.array(a[2]),
                           np.array(a[3], bool), np.array(a[4]), np.array(a[5]))
        lines = np.array(a[6])
        # t_s off the 10-minute grid still loads (windows of a client are only kept 10 minutes apart); times in
        # milliseconds fall past the data of a model the rates file knows
        check_starts(path, _CW, lines, cw.t_s, grid=False, span=spans.get(model), model=model)
        _refuse(path, _CW, lines, ~(np.isfinite(cw.rate_rps) & (cw.rate_rps >= 0)), "rate_rps", cw.rate_rps,
                "a rate >= 0 requests/s")
        _refuse(path, _CW, lines, ~(np.isfinite(cw.shape) & (cw.shape >= 0)), "param1", cw.shape, "a shape >= 0")
        _refuse(path, _CW, lines, ~(np.isfinite(cw.scale) & (cw.scale >= 0)), "param2", cw.scale, "a scale >= 0")
        # sampled twice, a repeated window doubled its requests; found in review: so did windows less than
        # WINDOW_S apart (each is sampled over the WINDOW_S after its t_s, so they overlapped: rows every 300 s
        # gave 2x the rate, every 60 s 10x)
        step = np.diff(cw.t_s)
        close = np.flatnonzero(step < WINDOW_S)
        if len(close):
            i = int(close[0])
            a, b = int(cw.t_s[i]), int(cw.t_s[i + 1])
            why = (f"two rows for the window t_s={a} ({int(np.count_nonzero(step == 0))} such repeats): keep one row "
                   f"per client and window" if a == b else
                   f"windows at t_s={a} and t_s={b}, {b - a} s apart: windows are 10 minutes ({WINDOW_S:g} s) "
                   f"long, so they overlapped ({len(close)} such pairs): give one row per client every "
                   f"{WINDOW_S:g} s at most")
            raise InvalidArgumentError(f"{_CW} {path}, lines {lines[i]} and {lines[i + 1]}: client {model}.c{cid} has "
                                       f"{why}; {_FIX}", path=path, line=int(lines[i + 1]), column="t_s")
        out[cw.name] = cw
    return out


def check_starts(path: str, what: str, lines: np.ndarray, t_s: np.ndarray, grid: bool = True,
                 span: tuple[float, float] | None = None, model: str = "") -> None:
    """Refuse window starts (column t_s, rows at ``lines``) that are negative or not finite, off the 10-minute
    grid (``grid``), or outside ``span`` = [lo, hi), where the rates file has data for ``model``. Found in review:
    times in milliseconds put every request into one window, or dropped all but 3 windows silently."""
    whole = np.isfinite(t_s) & (np.abs(t_s) < 2.0**62)
    shown = t_s.astype(np.int64) if whole.all() and (t_s == np.round(t_s)).all() else t_s  # "-600", as written
    _refuse(path, what, lines, ~(np.isfinite(t_s) & (t_s >= 0)), "t_s", shown,
            "a window start >= 0 (seconds from day 0's midnight)")
    if grid:
        _refuse(path, what, lines, t_s % WINDOW_S != 0, "t_s", shown,
                f"a multiple of {WINDOW_S:g} s (a window's start)")
    if span is not None:
        lo, hi = span
        _refuse(path, what, lines, (t_s < lo) | (t_s >= hi), "t_s", shown,
                f"inside model {model}'s data, [{lo:.0f}, {hi:.0f}) s, as the model rates file has it (a t_s past it: "
                f"are the times in milliseconds? t_s is seconds from day 0's midnight)")


_RATES = "ServeGen model rates"
_RATES_CELLS = (("t_s", float, "a window start (seconds)"), ("total_rate_rps", float, "a rate (a number of "
                "requests/s)"), ("rate_weighted_cv", float, "a number"))


def load_model_rates(path: str | None = None, end_s: float | None = None
                     ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per ServeGen model: (window start s, total rate rps, rate-weighted inter-arrival CV; NaN where the file has
    no rate_weighted_cv column). Refuses, by file, line and column, a cell that is no number, a window start that
    is negative, off the 10-minute grid or (``end_s``) not before ``end_s``, and a rate that is not >= 0."""
    path = path or data_path("servegen_model_rates_10min.csv")
    rows: dict[str, list] = {}
    with _open(path) as f:
        reader = csv.DictReader(f)
        _header(path, reader, ("model", "t_s", "total_rate_rps"), _RATES)
        has_cv = "rate_weighted_cv" in reader.fieldnames
        for r in reader:
            check_row(path, reader, r, (), _RATES, _FIX)
            try:
                rows.setdefault(r["model"], []).append((float(r["t_s"]), float(r["total_rate_rps"]),
                                                        float(r["rate_weighted_cv"]) if has_cv else math.nan,
                                                        reader.line_num))
            except (TypeError, ValueError):
                raise _bad_cell(path, _RATES, reader.line_num, r, _RATES_CELLS[:3 if has_cv else 2]) from None
    out = {}
    for m, v in rows.items():
        t, rate, cv, lines = (np.array(c) for c in zip(*sorted(v)))
        check_starts(path, _RATES, lines, t)
        if end_s is not None:
            _refuse(path, _RATES, lines, t >= end_s, "t_s", t.astype(np.int64),
                    f"a window start before {end_s:.0f} s, the end of the series ({end_s / 86400:g} days; a t_s "
                    f"past it: are the times in milliseconds? t_s is seconds)")
        _refuse(path, _RATES, lines, ~(np.isfinite(rate) & (rate >= 0)), "total_rate_rps", rate,
                "a rate >= 0 requests/s")
        out[m] = (t.astype(np.float64), rate.astype(np.float64), cv.astype(np.float64))
    return out


def load_length_stats(path: str | None = None) -> list[dict]:
    """The 6-hour length statistics rows, as dicts of strings (see SOURCES.md for the columns)."""
    with _open(path or data_path("servegen_length_stats_6h.csv")) as f:
        return list(csv.DictReader(f))


@dataclass
class LengthPMF:
    values: np.ndarray
    probs: np.ndarray

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.values[np.minimum(np.searchsorted(self.cdf, rng.random(n), side="right"), len(self.values) - 1)]

    def mean(self) -> float:
        return float((self.values * self.probs).sum())

    def __post_init__(self):
        self.probs = self.probs / self.probs.sum()
        self.cdf = np.cumsum(self.probs)


def load_length_pmfs(path: str | None = None) -> dict[tuple[str, str], LengthPMF]:
    """``(model, field) -> LengthPMF`` for input_tokens/output_tokens (and whatever else the file holds)."""
    return dict(_length_pmfs(file_key(os.path.abspath(path or data_path("servegen_length_pmf_io.csv.gz")))))


_PMF = "ServeGen length PMF"
_PMF_CELLS = (("value", float, "a length (a number)"), ("prob", float, "a probability (a number)"))


@functools.lru_cache(maxsize=4)
def _length_pmfs(key: tuple) -> dict[tuple[str, str], LengthPMF]:
    path = key[0]  # key: data.file_key, so that an edited file is read again
    # found in review: a negative length was sampled as it was, a NaN probability made the sampler return the first
    # length and probabilities summing to 0 gave NaN; each is refused, by line. Lengths of a token field must be
    # whole numbers >= 0; other fields (reason_ratio, ...) keep their whole part, and rows of theirs whose value is
    # no finite number are left out, as before
    rows: dict[tuple[str, str], list] = {}
    with _open(path) as f:
        reader = csv.DictReader(f)
        _header(path, reader, ("model", "field", "value", "prob"), _PMF)
        pos = {c: i for i, c in enumerate(reader.fieldnames)}  # a repeated column: its last cell, as DictReader
        i_model, i_field, i_value, i_prob = pos["model"], pos["field"], pos["value"], pos["prob"]
        for r in checked_rows(path, reader, (), _PMF, _FIX):
            try:
                row = (float(r[i_value]), float(r[i_prob]), reader.line_num)
            except (TypeError, ValueError):
                field = r[i_field]
                if field is not None and not field.endswith("_tokens") and r[i_prob] is not None:
                    try:
                        float(r[i_value])
                    except (TypeError, ValueError):
                        continue
                raise _bad_cell(path, _PMF, reader.line_num, dict(zip(reader.fieldnames, r)), _PMF_CELLS) from None
            rows.setdefault((r[i_model], r[i_field]), []).append(row)
    if not rows:
        raise InvalidArgumentError(f"{_PMF} {path} has a header but no row: give the derived file "
                                   f"servegen_length_pmf.csv(.gz), or leave pmf_path unset for the vendored one",
                                   path=path)
    out = {}
    for (model, field), v in rows.items():
        v.sort()
        a = list(zip(*v))
        values, probs, lines = np.array(a[0]), np.array(a[1]), np.array(a[2])
        if field.endswith("_tokens"):
            _refuse(path, _PMF, lines, ~(np.isfinite(values) & (values >= 0) & (values <= MAX_TOKENS)), "value",
                    values, f"a token length in [0, {MAX_TOKENS}]")
            _refuse(path, _PMF, lines, values != np.floor(values), "value", values, "a whole number of tokens")
        else:
            keep = np.isfinite(values)
            if not keep.any():
                continue
            values, probs, lines = values[keep], probs[keep], lines[keep]
        _refuse(path, _PMF, lines, ~(np.isfinite(probs) & (probs >= 0)), "prob", probs, "a probability >= 0")
        if not probs.sum() > 0:
            at = f"line {lines[0]}" if len(lines) == 1 else f"lines {lines.min()}-{lines.max()}"
            raise InvalidArgumentError(f"{_PMF} {path}, {at}: the probabilities of model {model}, field {field} sum "
                                       f"to 0: give one length a probability > 0, or leave that model's rows out",
                                       path=path, model=model, field=field)
        out[(model, field)] = LengthPMF(values.astype(np.int64), probs)
    return out


def sample_arrivals(series: ClientWindows, start_s: float, end_s: float, rate_scale: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Arrival times in [start_s, end_s) for one series, ServeGen's way (see the module doc)."""
    lo = np.searchsorted(series.t_s, start_s - WINDOW_S, side="right")
    hi = np.searchsorted(series.t_s, end_s, side="left")
    t0 = series.t_s[lo:hi]
    if len(t0) == 0:
        return np.zeros(0)
    expected = series.rate_rps[lo:hi] * WINDOW_S * rate_scale
    # stochastic rounding keeps the expected count exact at small rates
    n = np.floor(expected).astype(np.int64)
    n += rng.random(len(n)) < (expected - n)
    keep = n > 0
    if not keep.any():
        return np.zeros(0)
    t0, n = t0[keep], n[keep]
    # n + 1 gaps per window, the last one after the window's last request: normalising n gaps instead put that
    # request exactly on the window's end, so every series fired at once on each 600 s boundary (and the one on
    # a segment's end fell outside it)
    g = n + 1
    shape = np.repeat(np.maximum(series.shape[lo:hi][keep], 1e-3), g)
    scale = np.repeat(series.scale[lo:hi][keep], g)
    gam = np.repeat(series.is_gamma[lo:hi][keep], g)
    iat = np.where(gam, rng.gamma(shape, 1.0), rng.weibull(shape)) * scale
    iat = np.maximum(iat, 1e-12)
    ends = np.cumsum(g)
    csum = np.cumsum(iat)
    base = np.concatenate([[0.0], csum[ends[:-1] - 1]])
    total = csum[ends - 1] - base
    w = np.repeat(np.arange(len(g)), g)
    last = np.zeros(len(iat), bool)
    last[ends - 1] = True  # the closing gap of each window: no request there
    w = w[~last]
    rel = (csum[~last] - base[w]) / total[w]  # in (0, 1)
    arr = np.minimum(t0[w] + rel * WINDOW_S, np.nextafter(t0[w] + WINDOW_S, t0[w]))
    arr = arr[(arr >= start_s) & (arr < end_s)]
    return np.sort(arr)


#: replicas of a window ``covered_s`` samples (at least, at most), and the inter-arrival draws of one batch of them
COVER_REPLICAS = (16, 256)
COVER_DRAWS = 1 << 18
#: ``covered_s`` keeps the even share of a window with more than this many requests per squared CV of its fit in
#: the smaller of its covered and uncovered parts: the sampler's excess at a window's edge is about 0.35 / (n / cv^2
#: x) for the share x of a window of n requests (Gamma fits, exact Beta sums), so under 0.4% there
COVER_EVEN = 100.0


def _cv2(is_gamma: bool, shape: float) -> float:
    """Squared CV of the sampler's inter-arrival fit (shape clamped as ``sample_arrivals`` does)."""
    k = max(shape, 1e-3)
    if is_gamma:
        return 1.0 / k
    return math.exp(min(math.lgamma(1 + 2 / k) - 2 * math.lgamma(1 + 1 / k), 700.0)) - 1.0


def covered_s(series: ClientWindows, start_s: float, end_s: float, rate_scale: float,
              rng: np.random.Generator) -> np.ndarray:
    """Per window of ``series``: how many seconds of [start_s, end_s) its requests count for, such that its rate
    times them is the expected number of the requests ``sample_arrivals`` draws for it (at ``rate_scale``) that
    land in the span. That is the plain overlap for a window the span covers wholly or not at all; for one it
    covers in part, ``WINDOW_S`` times the expected share of the window's requests in the covered part, estimated
    by sampling replicas of the window with ``rng`` (the caller's own: the workload's draws do not change), or the
    even share where the window has requests enough to spread evenly (``COVER_EVEN``).
    Found in review: the overlap itself, i.e. requests spread evenly, put the asked rate 2x off for a minute at a
    window's edge, since the gaps normalised to fill the window pile a bursty fit's arrivals at both edges."""
    overlap = np.clip(np.minimum(series.t_s + WINDOW_S, end_s) - np.maximum(series.t_s, start_s), 0.0, None)
    out = overlap.copy()
    for i in np.flatnonzero((overlap > 0) & (overlap < WINDOW_S) & (series.rate_rps > 0)):
        n = float(series.rate_rps[i]) * WINDOW_S * rate_scale
        if n / _cv2(bool(series.is_gamma[i]), float(series.shape[i])) * min(overlap[i], WINDOW_S - overlap[i]) / \
                WINDOW_S >= COVER_EVEN:
            continue
        reps = int(np.clip(COVER_DRAWS // (n + 2.0), *COVER_REPLICAS))
        batch = max(1, int(COVER_DRAWS // (n + 2.0)))  # replicas per call, each in a window of its own, end to end
        inside = total = 0
        for done in range(0, reps, batch):
            k = min(batch, reps - done)
            slots = np.arange(k) * WINDOW_S
            one = np.full(k, i)
            copies = ClientWindows(series.model, series.client_id, slots, series.rate_rps[one], series.cv[one],
                                   series.is_gamma[one], series.shape[one], series.scale[one])
            arr = sample_arrivals(copies, 0.0, k * WINDOW_S, rate_scale, rng)
            at = series.t_s[i] + (arr - slots[np.searchsorted(slots, arr, side="right") - 1])  # the window's time
            inside += int(np.count_nonzero((at >= start_s) & (at < end_s)))
            total += len(arr)
        if total:  # a window too sparse to draw any request keeps the even share
            out[i] = inside / total * WINDOW_S
    return out


def expected_draws(series: list[ClientWindows], start_s: float, segs, rate_scale: float) -> float:
    """About how many requests ``sample_arrivals`` draws for ``series`` at ``rate_scale`` over the segments ``segs``
    ((start, end, day) each, relative to ``start_s``): every window's requests times the share of it they overlap
    (the even share: close enough for a budget, and no draw)."""
    total = 0.0
    for s in series:
        for a, b, _ in segs:
            overlap = np.clip(np.minimum(s.t_s + WINDOW_S, start_s + b) - np.maximum(s.t_s, start_s + a), 0.0, None)
            total += float((s.rate_rps * overlap).sum())
    return total * rate_scale


def window_edges(start_s: float, end_s: float) -> np.ndarray:
    """ServeGen window boundaries strictly inside (start_s, end_s)."""
    first = (np.floor(start_s / WINDOW_S) + 1) * WINDOW_S
    return np.arange(first, end_s, WINDOW_S) if first < end_s else np.zeros(0)


#: A model-level window below this share of the model's median rate is missing data, as in
#: warmserve.bench.forecast: the windows at exactly 0 and the partial ones at their edges (and one 2-hour stretch
#: of m-mid at 0.05-1% of its usual rate)
GAP_SHARE = 0.05


@functools.lru_cache(maxsize=4)
def _gaps_and_spans(key: tuple) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float]]]:
    path = key[0]  # key: data.file_key, so that an edited file is read again
    gaps, spans = {}, {}
    for m, (t, rate, _) in load_model_rates(path).items():
        gaps[m] = t[rate < GAP_SHARE * np.median(rate)]
        spans[m] = (float(t.min()), float(t.max()) + WINDOW_S)
    return gaps, spans


def data_gaps(path: str | None = None) -> dict[str, np.ndarray]:
    """Per ServeGen model: starts of the windows where the model's data is missing (m-mid 102, m-small 37): all
    its clients at 0, or a sliver of its usual rate (``GAP_SHARE``), while its data goes on around them.
    SOURCES.md reads the zeros as gaps in the published data, to treat as missing, not as a quiet spell: m-mid
    runs at ~1900 requests/s and drops to 0 for up to 3.8 hours."""
    return _gaps_and_spans(file_key(os.path.abspath(path or data_path("servegen_model_rates_10min.csv"))))[0]


def data_spans(path: str | None = None) -> dict[str, tuple[float, float]]:
    """Per ServeGen model: [first window start, last window end) of its published data, seconds from day 0's
    midnight (the language models 14 days, deepseek-r1 and mm-image day 0 only)."""
    return _gaps_and_spans(file_key(os.path.abspath(path or data_path("servegen_model_rates_10min.csv"))))[1]
