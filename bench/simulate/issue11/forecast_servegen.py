"""What forecasting is worth in the simulator, on ServeGen's 14 real days (the Azure trace of the headline presets
covers under an hour, so it cannot show a daily forecast): `warmserve` against its `reactive` ablation (the last
window stands for the next one) and `engine-prewarm-only` (no weights prewarmed), over cluster sizes and replay
start hours, each cell over the same seeds.

    python bench/simulate/issue11/forecast_servegen.py --json bench/simulate/issue11/forecast_servegen.json

Every cell is ``warmserve simulate --workload servegen --models M --gpus G --rate R --duration-s D
--start-hour H --history-days 7 --seeds 0,1,2 --no-search`` with the policies above; the script only loops.
P99 TTFT is the median over the seeds, SLO attainment and the prewarm hit rate their means (as the max-rate search
judges a rate). Beside the runs it prints how predictable the replayed series are: per series, the correlation of a
window's rate with the previous window's (what `reactive` bets on) and with the same window of the previous day (what a
daily forecast adds).
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

from warmserve.sim.presets import scale_preset
from warmserve.sim.runner import run_once
from warmserve.workload.recipes import DAY_S, servegen_series
from warmserve.workload.servegen import WINDOW_S

POLICIES = ("warmserve", "reactive", "engine-prewarm-only")


def predictability(n_models: int, days: int = 14) -> list[dict]:
    """Per distinct replayed series (as scale_preset picks them; a day-shifted copy of one counts once): lag-1
    window and lag-1 day correlation of the rate."""
    per_day = int(DAY_S // WINDOW_S)
    out = []
    for s in servegen_series(n_models, repeat_days=6)[:n_models]:
        if s.day_shift:  # a client's own series again, days earlier (beyond the distinct ones): counted once
            continue
        y = np.zeros(days * per_day)
        i = (np.asarray(s.t_s) // WINDOW_S).astype(int)
        ok = (i >= 0) & (i < len(y))
        np.add.at(y, i[ok], np.asarray(s.rate_rps)[ok])
        out.append({"series": s.name, "lag_window": float(np.corrcoef(y[1:], y[:-1])[0, 1]),
                    "lag_day": float(np.corrcoef(y[per_day:], y[:-per_day])[0, 1])})
    return out


def cell(gpus: int, hour: float, args, seeds, policies=POLICIES) -> dict:
    preset = scale_preset(gpus, args.models, duration_s=args.duration_s, total_rate_rps=args.rate,
                          start_hour=hour, history_days=args.history_days)
    row = {"gpus": gpus, "start_hour": hour, "policies": {}}
    for pol in policies:
        runs = [run_once(preset, pol, seed=s) for s in seeds]
        row["policies"][pol] = {
            "ttft_p99_s": statistics.median(r.summary["ttft_p99_s"] for r in runs),
            "ttft_mean_s": statistics.median(r.summary["ttft_mean_s"] for r in runs),
            "slo_attainment": statistics.mean(r.summary["slo_attainment"] for r in runs),
            "prewarm_hit_rate": statistics.mean(r.summary["prewarm_hit_rate"] for r in runs),
            "refused_per_seed": [r.summary["refused"] for r in runs],
            "ttft_p99_s_per_seed": [r.summary["ttft_p99_s"] for r in runs]}
    cells = (f"{pol} P99 {v['ttft_p99_s']:.2f} s, refused {sum(v['refused_per_seed'])}"
             for pol, v in row["policies"].items())
    print(f"  {gpus} GPUs, {hour:g} h: " + ", ".join(cells), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", default="16,24,32", help="cluster sizes (8 GPUs per server)")
    ap.add_argument("--hours", default="20,10.5,13,22", help="replay start hours on ServeGen's last day")
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--rate", type=float, default=8.0, help="total request rate, requests/s, at every size")
    ap.add_argument("--duration-s", type=float, default=1200.0)
    ap.add_argument("--history-days", type=int, default=7)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="policies per cell; the table below needs the default three")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    policies = tuple(args.policies.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    pred = predictability(args.models)
    rows = [cell(int(g), float(h), args, seeds, policies) for g in args.gpus.split(",") for h in args.hours.split(",")]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "seeds": seeds, "predictability": pred, "cells": rows}, f, indent=1)
    if set(POLICIES) - set(policies):
        return
    lw = [p["lag_window"] for p in pred]
    ld = [p["lag_day"] for p in pred]
    print(f"\nrate correlation of the {len(pred)} series, median (range): with the previous window "
          f"{statistics.median(lw):.2f} ({min(lw):.2f}-{max(lw):.2f}), with the same window a day before "
          f"{statistics.median(ld):.2f} ({min(ld):.2f}-{max(ld):.2f})\n")
    print("| GPUs | start | P99 s warmserve / reactive / engine-prewarm-only | SLO | prewarm hits | "
          "P99 reactive / warmserve |\n|---|---|---|---|---|---|")
    for r in rows:
        p = r["policies"]
        w, re_, e = (p[k] for k in POLICIES)
        print(f"| {r['gpus']} | {r['start_hour']:g} h | {w['ttft_p99_s']:.2f} / {re_['ttft_p99_s']:.2f} / "
              f"{e['ttft_p99_s']:.2f} | {w['slo_attainment']:.3f} / {re_['slo_attainment']:.3f} / "
              f"{e['slo_attainment']:.3f} | {w['prewarm_hit_rate']:.2f} / {re_['prewarm_hit_rate']:.2f} | "
              f"{re_['ttft_p99_s'] / w['ttft_p99_s']:.2f}x |")


if __name__ == "__main__":
    main()
