"""ServeGen (Xiang et al., "ServeGen", arXiv:2505.09999; Apache-2.0): Alibaba Bailian's per-model and per-client
10-minute arrival rates over 14 days, with fitted inter-arrival distributions and token-length PMFs.

Arrivals are generated as ServeGen does: in each 10-minute window a client with rate r sends n = r x 600
requests whose inter-arrival times (n + 1 of them: the last runs from the last request to the window's end) are
drawn from the window's fitted Gamma or Weibull and rescaled so that they fill the window. The package vendors
the largest clients of each model; pass ``path=`` to use the full ``servegen_client_windows.csv.gz``.
"""

from __future__ import annotations

import csv
import functools
import gzip
import os
from dataclasses import dataclass

import numpy as np

from warmserve.workload.data import data_path

WINDOW_S = 600.0
LANGUAGE_MODELS = ("m-large", "m-mid", "m-small")


def _open(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"ServeGen file {path} not found: pass path= to a file derived by "
                                f"derive_servegen.py, or reinstall warmserve (its data folder holds the defaults)")
    return gzip.open(path, "rt", newline="") if path.endswith(".gz") else open(path, newline="")


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
    return dict(_client_windows(os.path.abspath(path or data_path("servegen_client_windows_top.csv.gz")),
                                tuple(models) if models else None))


@functools.lru_cache(maxsize=4)
def _client_windows(path: str, models: tuple[str, ...] | None) -> dict[str, ClientWindows]:
    cols: dict[tuple[str, int], list] = {}
    with _open(path) as f:
        for r in csv.DictReader(f):
            if models and r["model"] not in models:
                continue
            if not r["pattern"]:
                continue
            cols.setdefault((r["model"], int(r["client_id"])), []).append(
                (int(r["t_s"]), float(r["rate_rps"]), float(r["cv"]), r["pattern"] == "Gamma",
                 float(r["param1"]), float(r["param2"])))
    out = {}
    for (model, cid), rows in cols.items():
        rows.sort()
        a = list(zip(*rows))
        cw = ClientWindows(model, cid, np.array(a[0], np.float64), np.array(a[1]), np.array(a[2]),
                           np.array(a[3], bool), np.array(a[4]), np.array(a[5]))
        out[cw.name] = cw
    return out


def load_model_rates(path: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per ServeGen model: (window start s, total rate rps, rate-weighted inter-arrival CV)."""
    path = path or data_path("servegen_model_rates_10min.csv")
    rows: dict[str, list] = {}
    with _open(path) as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["model"], []).append((int(r["t_s"]), float(r["total_rate_rps"]),
                                                    float(r["rate_weighted_cv"])))
    return {m: tuple(np.array(c, np.float64) for c in zip(*sorted(v))) for m, v in rows.items()}


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
    return dict(_length_pmfs(os.path.abspath(path or data_path("servegen_length_pmf_io.csv.gz"))))


@functools.lru_cache(maxsize=4)
def _length_pmfs(path: str) -> dict[tuple[str, str], LengthPMF]:
    rows: dict[tuple[str, str], list] = {}
    with _open(path) as f:
        for r in csv.DictReader(f):
            try:
                v = int(float(r["value"]))
            except ValueError:
                continue
            rows.setdefault((r["model"], r["field"]), []).append((v, float(r["prob"])))
    out = {}
    for k, v in rows.items():
        v.sort()
        out[k] = LengthPMF(np.array([a for a, _ in v], np.int64), np.array([b for _, b in v]))
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


def window_edges(start_s: float, end_s: float) -> np.ndarray:
    """ServeGen window boundaries strictly inside (start_s, end_s)."""
    first = (np.floor(start_s / WINDOW_S) + 1) * WINDOW_S
    return np.arange(first, end_s, WINDOW_S) if first < end_s else np.zeros(0)


#: A model-level window below this share of the model's median rate is missing data, as in
#: warmserve.bench.forecast: the windows at exactly 0 and the partial ones at their edges (and one 2-hour stretch
#: of m-mid at 0.05-1% of its usual rate)
GAP_SHARE = 0.05


@functools.lru_cache(maxsize=4)
def _gaps_and_spans(path: str) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float]]]:
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
    return _gaps_and_spans(os.path.abspath(path or data_path("servegen_model_rates_10min.csv")))[0]


def data_spans(path: str | None = None) -> dict[str, tuple[float, float]]:
    """Per ServeGen model: [first window start, last window end) of its published data, seconds from day 0's
    midnight (the language models 14 days, deepseek-r1 and mm-image day 0 only)."""
    return _gaps_and_spans(os.path.abspath(path or data_path("servegen_model_rates_10min.csv")))[1]
