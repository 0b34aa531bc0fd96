"""``last_instance_hold_s`` on ServeGen's 14 days, a workload none of the scale-in choices was made on: warmserve
with and without the hold on the forecasting cells of README.md (16 models at 8 rps, 20-minute replays at four start
hours, 16 / 24 / 32 GPUs, seeds 0-2), P99 TTFT with / without per seed, SLO attainment and GPU-seconds.

    python bench/simulate/issue11/last_instance_hold_servegen.py \
        --json bench/simulate/issue11/last_instance_hold_servegen.json \
        > bench/simulate/issue11/last_instance_hold_servegen.txt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

from warmserve.outputs import write_json_atomic

KEYS = ("ttft_p99_s", "ttft_p50_s", "slo_attainment", "gpu_seconds")


def run(gpus: int, hour: float, hold_s: float, seeds: str) -> dict:
    """warmserve on one ServeGen cell (the forecasting cells' command, README.md "How to run"): its medians over the
    seeds and each seed's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.json")
        subprocess.run(["warmserve", "simulate", "--workload", "servegen", "--models", "16", "--gpus", str(gpus),
                        "--rate", "8", "--duration-s", "1200", "--start-hour", f"{hour:g}", "--history-days", "7",
                        "--seeds", seeds, "--no-search", "--policy", "warmserve", "--policy-option",
                        f"last_instance_hold_s={hold_s:g}", "--quiet", "--json", out],
                       check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            p = json.load(f)["policies"]["warmserve"]
    return {"median": {k: p[k] for k in KEYS},
            "per_seed": {s: {k: r[k] for k in KEYS} for s, r in sorted(p["per_seed"].items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hold-s", type=float, default=10.0)
    ap.add_argument("--gpus", default="16,24,32")
    ap.add_argument("--hours", default="20,10.5,13,22")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cells = [(int(g), float(h)) for g in args.gpus.split(",") for h in args.hours.split(",")]
    with ThreadPoolExecutor(args.jobs) as pool:  # each run is its own process
        futs = {(g, h, hold): pool.submit(run, g, h, hold, args.seeds) for g, h in cells for hold in (0.0, args.hold_s)}
        got = {k: f.result() for k, f in futs.items()}
    rows = []
    print(f"warmserve with last_instance_hold_s={args.hold_s:g} against without on ServeGen (16 models, 8 rps, "
          f"1200 s, seeds {args.seeds})\n")
    print("| GPUs | start hour | P99 with / without per seed | P99 medians without -> with | SLO without -> with "
          "| GPU-s with / without |")
    print("|---:|---:|---|---|---|---:|")
    for g, h in cells:
        wo, w = got[(g, h, 0.0)], got[(g, h, args.hold_s)]
        ratios = [w["per_seed"][s]["ttft_p99_s"] / wo["per_seed"][s]["ttft_p99_s"] for s in wo["per_seed"]]
        rows.append({"gpus": g, "start_hour": h, "without": wo, "with": w, "p99_ratio": ratios})
        print(f"| {g} | {h:g} | {' / '.join(f'{r:.2f}' for r in ratios)} ({statistics.median(ratios):.2f}x) | "
              f"{wo['median']['ttft_p99_s']:.3f} -> {w['median']['ttft_p99_s']:.3f} s | "
              f"{wo['median']['slo_attainment']:.3f} -> {w['median']['slo_attainment']:.3f} | "
              f"{w['median']['gpu_seconds'] / wo['median']['gpu_seconds']:.3f}x |")
    if args.json:
        write_json_atomic(args.json, {"hold_s": args.hold_s, "seeds": args.seeds, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
