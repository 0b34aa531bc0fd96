"""What a simulation run measured: TTFT, TPOT, SLO attainment, throughput, prewarm hits, GPU-seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RunResult:
    policy: str
    #: summary numbers (the JSON's per-policy entry)
    summary: dict
    #: per model: the same numbers, for the models that received requests
    per_model: dict = field(default_factory=dict)
    #: TTFT of every measured request (unanswered ones as ``summarize`` counts them), for CDF plots
    ttft_s: np.ndarray = field(default_factory=lambda: np.zeros(0))


#: the summary's name of each counter of instance starts, evictions and moved requests (``Simulator.counts``'
#: keys), in the summary's order
START_FIELDS = {"total": "instance_starts", "hit": "starts_from_prewarm", "loading": "starts_from_loading_prewarm",
                "cold": "starts_cold", "evictions": "evictions", "migrated": "requests_migrated"}


def start_summary(counts: dict, *, hit_rate: bool = True) -> dict:
    """The summary's fields of the counters ``counts`` (keyed as ``START_FIELDS``), after the prewarm hit rate (the
    starts from a loaded prewarm over all starts) where ``hit_rate``: one naming for the run's summary, its warm-up
    block and ``fold_warmup_starts``."""
    out = {}
    if hit_rate:
        out["prewarm_hit_rate"] = (counts["hit"] / counts["total"]) if counts["total"] else 0.0
    out.update((name, counts[k]) for k, name in START_FIELDS.items())
    return out


def fold_warmup_starts(summary: dict) -> dict:
    """``summary`` with the counters of its warm-up block (``summary["warmup"]``) added to its own and the block
    left out: the figures of a run counted from its launch, as a live run without a warm-up counts them."""
    s = dict(summary)
    wu = s.pop("warmup", None)
    if wu is not None:
        s.update(start_summary({k: s[name] + wu[name] for k, name in START_FIELDS.items()}))
    return s


def pct(x: np.ndarray, q: float) -> float:
    """The q-th percentile of x; NaN for no values (a policy that answered nothing has no TTFT percentile)."""
    return float(np.percentile(x, q)) if len(x) else float("nan")


def _stats(ttft, tpot, ok, done, n, duration_s) -> dict:
    return {
        "requests": int(n),
        "completed": int(done.sum()),
        "dropped": int(n - done.sum()),
        "ttft_mean_s": float(ttft.mean()) if n else float("nan"),
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p90_s": pct(ttft, 90),
        "ttft_p95_s": pct(ttft, 95),
        "ttft_p99_s": pct(ttft, 99),
        "tpot_mean_s": float(tpot.mean()) if len(tpot) else float("nan"),
        "tpot_p50_s": pct(tpot, 50),
        "tpot_p99_s": pct(tpot, 99),
        "slo_attainment": float(ok.mean()) if n else float("nan"),
        # completed requests over the trace's span, the offered rate where every request completed, however late the
        # last one finished (the drain is drain_s, apart). Found in review: over max(end_s, duration_s), the drain
        # in the denominator, a run that answered every request read below the offered rate (20.78 of 24.07 rps)
        "throughput_rps": float(done.sum() / max(duration_s, 1e-9)),
    }


def summarize(policy, names, arrival_s, first_s, finish_s, model, output_tokens, slo_s, *, duration_s, end_s,
              gpu_seconds, starts, evictions, n_gpus, unanswered_ttft_s=None, migrated=0,
              gpu_seconds_holding=None, refused=0) -> RunResult:
    """Turn per-request times (NaN: never happened) into the run's statistics. A request without a first token
    counts as waiting until the end of the run, ``end_s`` - its arrival (found in review: a fixed 999 s was less
    than a late answer can take, up to ~1800 s with the drain, so dropping a request scored better than answering
    it late), or as ``unanswered_ttft_s`` where a caller gives one (the live replay's twin no longer does: its live
    side counts the same wait, to the client's deadline); one without a finish counts as dropped. ``migrated``: requests
    moved off an instance to be resumed on another (``actions.Migrate``). ``refused``: requests an engine refused at
    once, too large for its KV cache (``BatchEngines.admit``); they count as unanswered and dropped too."""
    answered = ~np.isnan(first_s)
    unanswered = end_s - arrival_s if unanswered_ttft_s is None else unanswered_ttft_s
    ttft = np.where(answered, first_s - arrival_s, unanswered)
    done = ~np.isnan(finish_s)
    multi = done & (output_tokens > 1)
    tpot_all = np.full(len(arrival_s), np.nan)
    tpot_all[multi] = (finish_s[multi] - first_s[multi]) / (output_tokens[multi] - 1)
    ok = answered & (ttft <= slo_s)
    n = len(arrival_s)
    summary = _stats(ttft, tpot_all[multi], ok, done, n, duration_s)
    summary.update({
        "unanswered": int((~answered).sum()),
        "refused": int(refused),
        **start_summary({**starts, "evictions": evictions, "migrated": int(migrated)}),
        "gpu_seconds": float(gpu_seconds),
        # GPUs holding prewarmed weights counted too (the simulator's tick-sampled figure)
        "gpu_seconds_holding": float(gpu_seconds if gpu_seconds_holding is None else gpu_seconds_holding),
        "gpu_utilization": float(gpu_seconds / max(n_gpus * max(end_s, duration_s), 1e-9)),
        "duration_s": float(duration_s),
        "end_s": float(end_s),
        "drain_s": float(max(end_s - duration_s, 0.0)),  # how long the run went on past the trace's end
    })
    per_model = {}
    for i, name in enumerate(names):
        sel = model == i
        if sel.any():
            per_model[name] = _stats(ttft[sel], tpot_all[sel & multi], ok[sel], done[sel], int(sel.sum()),
                                     duration_s)
    return RunResult(policy, summary, per_model, ttft)
