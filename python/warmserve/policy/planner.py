"""How many replicas of a model to prewarm for the next window, and their scores (PAPER.md §2)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    """One replica the plan wants prewarmed."""

    model: str
    #: 0-based rank among the model's replicas (foundation ones first).
    rank: int
    burst: bool
    score: float


def replica_counts(avg: float, peak: float, running: int, capacity: int) -> tuple[int, int]:
    """(n_foundation, n_burst) for forecasts of average and peak in-flight requests.

    n_f = max(ceil(avg / B) - running, 0); n_b = max(ceil(peak / B) - running - n_f, 0). A missing (NaN) average
    counts as 0, a missing peak as the average."""
    avg, peak = _known(avg, peak)
    n_f = max(math.ceil(avg / capacity) - running, 0)
    n_b = max(math.ceil(peak / capacity) - running - n_f, 0)
    return n_f, n_b


def replica_scores(n_f: int, n_b: int, cold_start_s: float, avg: float, peak: float) -> list[float]:
    """Scores of the n_f foundation then n_b burst replicas: exp(-i / n) * c_m for foundation replica i and
    exp(-(n_f + j) / n) * c_m * peak / avg for burst replica j (n = n_f + n_b, 0-based ranks). An average
    under one request counts as one, so a model idle on average but with a forecast burst stays finite."""
    n = n_f + n_b
    if n == 0:
        return []
    burstiness = peak / max(avg, 1.0)
    out = [math.exp(-i / n) * cold_start_s for i in range(n_f)]
    out += [math.exp(-(n_f + j) / n) * cold_start_s * burstiness for j in range(n_b)]
    return out


def _known(avg: float, peak: float) -> tuple[float, float]:
    """NaN forecasts as replica_counts takes them (found in review: a NaN peak with a known average crashed the
    plan in math.ceil)."""
    avg = 0.0 if math.isnan(avg) else avg
    return avg, avg if math.isnan(peak) else peak


def plan_model(model: str, avg: float, peak: float, running: int, capacity: int,
               cold_start_s: float) -> list[Candidate]:
    avg, peak = _known(avg, peak)
    if not (math.isfinite(avg) and math.isfinite(peak)):
        raise ValueError(f"forecast of {model!r} is not finite: avg {avg}, peak {peak}")
    n_f, n_b = replica_counts(avg, peak, running, capacity)
    scores = replica_scores(n_f, n_b, cold_start_s, avg, peak)
    return [Candidate(model, i, i >= n_f, s) for i, s in enumerate(scores)]
