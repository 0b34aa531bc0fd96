"""What `warmserve simulate` writes: the medians over seeds of a policy's summary and per-model figures, the
workload block, and what makes the JSON strict JSON (a figure a run does not have is null, not a bare NaN)."""

from __future__ import annotations

import math
import statistics

from warmserve.outputs import is_special, write_json_atomic


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def median_summary(summaries: list[dict], seeds: list[int]) -> dict:
    """Per numeric field, the median over runs; per numeric field of a block of counters (``warmup``), the median
    over the runs that have it; anything else (``shared_layout``, ``dedicated_layout``) the first seed's, marked
    ``<field>_of_seed`` (each seed's own is in ``per_seed``). One run: its summary as it is. Found in review: the
    warm-up counters were the first seed's, so --seeds 0,1 and 1,0 wrote different medians."""
    out = dict(summaries[0])
    if len(summaries) == 1:
        return out
    for k, v in summaries[0].items():
        if _numeric(v):
            out[k] = statistics.median(x[k] for x in summaries)
        elif isinstance(v, dict) and v and all(_numeric(x) for x in v.values()):
            runs = [x[k] for x in summaries if isinstance(x.get(k), dict)]
            out[k] = {f: statistics.median(r[f] for r in runs if f in r) for f in v}
        else:
            out[f"{k}_of_seed"] = seeds[0]
    return out


def median_per_model(per_models: list[dict]) -> dict:
    """Per model and numeric field, the median over the runs that sent the model requests (a run's ``per_model``
    lists only those), NaNs (no such figure in a run: no TPOT without multi-token outputs) left out, NaN where every
    run has one; anything else the first such run's. One run: its own ``per_model`` as it is. Found in review: the
    JSON's per_model was seed 0's alone beside medians everywhere else."""
    out = {}
    for pm in per_models:
        for name in pm:
            if name in out:
                continue
            runs = [x[name] for x in per_models if name in x]
            out[name] = dict(runs[0])
            for k, v in runs[0].items():
                if _numeric(v):
                    vals = [r[k] for r in runs if not (isinstance(r[k], float) and math.isnan(r[k]))]
                    out[name][k] = statistics.median(vals) if vals else v
    return out


def request_count(workloads: dict, seeds: list[int]):
    """The replay's request count: the one seed's, or the median over ``seeds`` (found in review: the first seed's,
    so the header and the JSON depended on the order of --seeds)."""
    counts = [len(workloads[sd].trace) for sd in seeds]
    return counts[0] if len(counts) == 1 else statistics.median(counts)


def workload_block(workloads: dict, seeds: list[int]) -> dict:
    """The JSON's ``workload``: the request count (``request_count``; with several seeds each seed's too), the
    replayed span, and the first seed's recipe record (``meta``, which names its seed)."""
    first = workloads[seeds[0]]
    d = {"requests": request_count(workloads, seeds), "duration_s": first.duration_s, "meta": first.meta}
    if len(seeds) > 1:
        d["requests_per_seed"] = {str(sd): len(workloads[sd].trace) for sd in seeds}
    return d


def span_rates(s: dict, duration_s: float | None = None) -> dict:
    """``s``, a run's summary (or a model's figures, with its run's ``duration_s``) from a file written before
    2026-12-06, recounted as ``sim.metrics`` counts today: ``throughput_rps`` the requests completed over the trace's
    span, ``drain_s`` the run's time past it where the file has its ``end_s`` (before, throughput was completed over
    max(end_s, duration_s) here, over the last completion in ``bench replay``'s live side). ``--reuse-live`` reads
    such files."""
    dur = s.get("duration_s", duration_s)
    if not _numeric(s.get("completed")) or not _numeric(dur) or dur <= 0:
        return s
    out = dict(s, throughput_rps=s["completed"] / dur)
    if _numeric(s.get("end_s")):
        out["drain_s"] = max(s["end_s"] - dur, 0.0)
    if isinstance(s.get("per_model"), dict):
        out["per_model"] = {m: span_rates(v, dur) for m, v in s["per_model"].items()}
    return out


def finite_or_null(obj):
    """``obj`` with every NaN or infinite float (a figure a run does not have: no TTFT percentile without a
    request) as None, so that the JSON is strict JSON (found in review: bare NaN tokens, which JSON.parse and
    strict parsers refuse). Other values are left as they are, for ``json.dump``'s ``default``."""
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, float) or (type(obj).__module__ == "numpy" and hasattr(obj, "dtype")
                                  and obj.dtype.kind == "f"):
        return obj if math.isfinite(obj) else None
    return obj


def at_least(summary: dict, target) -> str:
    """">= " before a max rate under the SLO that is only a lower bound (``max_rate_under_slo``), else ""."""
    return ">= " if f"{float(target):g}" in summary.get("max_rate_lower_bound_at_slo_targets", []) else ""


def _columns(lines: list[list[str]]) -> str:
    """Rows of cells as aligned text: the first column left-aligned, the others right-aligned."""
    w = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in lines)


def summary_table(rows: dict) -> str:
    """`warmserve simulate`'s table of one run: a row per policy summary in ``rows``. A max rate under the SLO that
    is only a lower bound at the headline target (``at_least``) reads ">=X" (found in review: a plain figure here,
    though stderr printed ">= X rps" and the JSON listed it in max_rate_lower_bound_at_slo_targets)."""
    cols = [("policy", "{}"), ("ttft_mean_s", "{:.3f}"), ("ttft_p50_s", "{:.3f}"), ("ttft_p90_s", "{:.3f}"),
            ("ttft_p99_s", "{:.3f}"), ("tpot_p50_s", "{:.4f}"), ("slo_attainment", "{:.3f}"),
            ("throughput_rps", "{:.2f}"), ("prewarm_hit_rate", "{:.2f}"), ("gpu_seconds", "{:.0f}"),
            ("gpu_seconds_holding", "{:.0f}"), ("dropped", "{:g}"), ("drain_s", "{:.0f}"),
            ("max_rate_under_slo_rps", "{:.2f}")]
    # GPU-s: GPUs serving an instance; GPU-s held: GPUs holding anything, prewarmed weights included; thr rps and
    # drain s: completed over the trace's span, and the run's time past it (``sim.metrics``)
    head = ["policy", "TTFT mean", "p50", "p90", "p99", "TPOT p50", "SLO", "thr rps", "hit", "GPU-s", "GPU-s held",
            "dropped", "drain s", "max rps@SLO"]
    lines = [head]
    for name, s in rows.items():
        # a hit rate of no start is no figure (found in review: 0.00 read as every start missed)
        cells = [f.format(s[k]) if isinstance(s.get(k), (int, float))
                 and not (k == "prewarm_hit_rate" and s.get("instance_starts") == 0) else "-" for k, f in cols[1:]]
        if cells[-1] != "-" and "slo_target" in s:  # no space: one token, as every other figure
            cells[-1] = at_least(s, s["slo_target"]).strip() + cells[-1]
        lines.append([name] + cells)
    return _columns(lines)


def sweep_table(sweep: dict) -> str:
    """`warmserve simulate --sweep-rate`'s table: per policy (and cold-start band end) P99 TTFT / SLO attainment at
    each offered rate, and the max swept rate under the SLO, ">=X" where even the highest swept rate met the target
    (``max_swept_rate_is_lower_bound``; found in review: shown as a plain figure, as if the maximum)."""
    head = ["policy"] + [f"{pt['offered_rate_rps']:.1f} rps" for pt in next(iter(sweep["policies"].values()))["points"]]
    lines = [head + ["max swept rps@SLO"]]
    for name, pol in sweep["policies"].items():
        bound = ">=" if pol.get("max_swept_rate_is_lower_bound") else ""
        lines.append([name] + [f"{pt['ttft_p99_s']:.2f}s/{pt['slo_attainment']:.3f}" for pt in pol["points"]]
                     + [f"{bound}{pol['max_swept_rate_under_slo_rps']:.1f}"])
        b = pol.get("cold_start_band")
        if b:
            for end, key in zip(b["cold_start_s"], ("low", "high")):
                lines.append([f"  cold start {end:g} s"]
                             + [f"{pt['ttft_p99_s']:.2f}s/{pt['slo_attainment']:.3f}" for pt in b[key]] + [""])
    return _columns(lines)


def write_results(path: str, doc: dict) -> None:
    """The results ``doc`` into ``path`` atomically (``write_json_atomic``), as strict JSON: NaN and infinite
    figures as null (``finite_or_null``)."""
    write_json_atomic(path, finite_or_null(doc), indent=1, default=float, allow_nan=False)


class Saved:
    """What the --json holds so far, for the line an interrupt prints: the policies (or, of a --sweep-rate, the
    rate scales) written, and those still missing. A pipe or device gets its one document at the end only."""

    def __init__(self, path: str | None):
        self.path, self.done, self.missing, self.unit = path, [], [], "policies"
        self.at_end = bool(path) and is_special(path)

    def line(self) -> str:
        if not self.path:
            return "no --json given, nothing saved"
        if self.at_end:
            return f"nothing written to {self.path} (a pipe or device gets the results once, at the end)"
        if not self.done:
            return f"nothing written to {self.path} (none of its {self.unit} had finished)"
        key = "missing_" + self.unit.replace(" ", "_")
        return (f"{self.path} holds the finished {self.unit} {', '.join(map(str, self.done))}"
                + (f" (marked partial, {key}: {', '.join(map(str, self.missing))})" if self.missing else ""))
