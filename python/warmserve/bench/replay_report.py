"""The report of `warmserve bench replay` (``bench.replay``): its tables, the live-against-simulated validation,
the TTFT CDF plot and the --json document."""

from __future__ import annotations

import numpy as np

from warmserve.bench.replay_setup import idle_windows, warmup_span_s


def table(rows: dict, cols) -> str:
    lines = [[c[0] for c in cols]]
    for name, s in rows.items():
        lines.append([name] + [f.format(s[k]) if isinstance(s.get(k), (int, float)) else "-" for _, k, f in cols[1:]])
    w = [max(len(r[i]) for r in lines) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in lines)


LIVE_COLS = [("policy", "", ""), ("reqs", "requests", "{}"), ("answered", "answered", "{}"),
             ("failed", "dropped", "{}"), ("TTFT p50", "ttft_p50_s", "{:.3f}"), ("p99", "ttft_p99_s", "{:.3f}"),
             ("TPOT p50", "tpot_p50_s", "{:.4f}"), ("e2e p50", "e2e_p50_s", "{:.3f}"),
             ("e2e p99", "e2e_p99_s", "{:.3f}"),
             ("starts", "instance_starts", "{}"), ("hit", "prewarm_hit_rate", "{:.2f}"),
             ("moved", "requests_migrated", "{}"), ("thr rps", "throughput_rps", "{:.2f}"),
             ("drain s", "drain_s", "{:.0f}")]


def validation(live: dict, sim: dict) -> dict:
    out = {}
    for p in live:
        if p not in sim:
            continue
        row = {}
        for k in ("ttft_p50_s", "ttft_p99_s"):
            a, b = live[p].get(k), sim[p].get(k)
            row[f"live_{k}"], row[f"sim_{k}"] = a, b
            row[f"sim_over_live_{k.split('_')[1]}"] = b / a if a else float("nan")
        row["within_25pct"] = all(abs(row[f"sim_over_live_{q}"] - 1) <= 0.25 for q in ("p50", "p99"))
        out[p] = row
    return out


def plot_cdf(live: dict, sim: dict, path: str, title: str) -> None:
    """Live (solid) and simulated (dashed) TTFT CDFs, one colour per policy."""
    from warmserve.sim.plot import plot_ttft_cdf

    curves = []
    for i, (name, x) in enumerate(live.items()):
        curves += [(f"{name} (live)", x, "-", f"C{i}"), (f"{name} (sim)", sim.get(name), "--", f"C{i}")]
    plot_ttft_cdf(curves, path, title)


def plot_title(workload: str, n_requests: int, wall_s: float, args) -> str:
    """The replay CDF's title: the workload, its rate (over ``wall_s``, the replay's wall span) and where it ran,
    then the settings that make one replay differ from another (found in review: two plots of runs at
    --time-scale 0.25 and 1 had one title)."""
    where = f"{args.endpoint})" if args.endpoint else f"{args.cpu_workers} CPU workers)"
    return (f"TTFT CDF, {workload} replay ({n_requests / wall_s:.2f} rps, {where}\n"
            f"{args.duration_s:g} trace s at time scale {args.time_scale:g} ({wall_s:g} wall s), seed {args.seed}")


def no_error_text(s: dict, drain_s: float) -> str:
    # found in review: requests that timed out said "(no error text)", which named neither the wait nor its flag
    n = s["outcomes"].get("unanswered", 0)
    return (f"nothing: {n} requests got no first token within --drain-s {drain_s:g} s after the last arrival (a "
            f"server this slow needs a longer --drain-s)") if n else "(no error text)"


def ratio_figures(live: dict, sim: dict) -> dict:
    out = {}
    if "warmserve" in live and "autoscale" in live and live["warmserve"]["ttft_p99_s"] > 0:
        out["p99_ttft_autoscale_over_warmserve"] = live["autoscale"]["ttft_p99_s"] / live["warmserve"]["ttft_p99_s"]
    if "warmserve" in sim and "autoscale" in sim and sim["warmserve"]["ttft_p99_s"] > 0:
        out["sim_p99_ttft_autoscale_over_warmserve"] = sim["autoscale"]["ttft_p99_s"] / sim["warmserve"]["ttft_p99_s"]
    return out


def write_results(args, w, reqs, served, live, live_ttft, sim, sim_ttft, wall_s: float, warm=()) -> None:
    """The --json document of the policies run so far."""
    from warmserve.outputs import write_json_atomic

    doc = {"workload": {"name": w.name, "requests": len(reqs), "duration_s": w.duration_s,
                        "history_requests": len(w.history), "idle_lead_windows": idle_windows(args), "meta": w.meta},
           "cluster": {"endpoint": args.endpoint, "cpu_workers": None if args.endpoint else args.cpu_workers,
                       "models": [list(m) for m in served]},
           "args": {k: v for k, v in vars(args).items() if k not in ("api_key", "given_flags")},
           "policies": live, "simulated": {"policies": sim} if sim else None, "validation": validation(live, sim),
           "ratios": ratio_figures(live, sim), "wall_s": wall_s,
           "ttft_s": {p: np.round(x, 4).tolist() for p, x in live_ttft.items()},
           "sim_ttft_s": {p: np.round(x, 4).tolist() for p, x in sim_ttft.items()}}
    if args.warmup_s > 0:
        doc["workload"].update(warmup_requests=len(warm), warmup_span_s=warmup_span_s(args))
    write_json_atomic(args.json, doc, indent=1, default=jsonable)


def jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
