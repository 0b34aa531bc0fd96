"""warmserve's ``last_instance_hold_s`` over a range of holds, paired by seed against the registered policy (no
hold): a quiet model's last instance stops for a model that wants GPUs only once it has been quiet that long.
Per cell (preset x as traced / burst CV 4, seeds 0-5): the median over seeds of P99 TTFT with the hold / without,
the seeds where it is worse, the median SLO attainment difference and GPU-seconds ratio; and, for the cells
autoscale_best.json has (14 s engine start, seeds 0-2), `autoscale`'s best of its 13 settings over warmserve's
P99 at each hold, medians over seeds 0-2 of the same runs.

    python bench/simulate/issue11/last_instance_hold.py --json bench/simulate/issue11/last_instance_hold.json \
        --plot bench/simulate/issue11/last_instance_hold.png > bench/simulate/issue11/last_instance_hold.txt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from paired_option import one  # this folder's scripts

from warmserve.outputs import write_json_atomic

HERE = Path(__file__).resolve().parent
PRESETS = ("paper-conv", "paper-code", "artifact-conv", "artifact-code")


def autoscale_best() -> dict[tuple[str, float | None], float]:
    """(preset, burst CV) -> `autoscale`'s best P99 of its 13 settings at a 14 s engine start, seeds 0-2."""
    rows = json.loads((HERE / "autoscale_best.json").read_text())["rows"]
    cells = {"traced_14s": None, "cv4_14s": 4.0}
    return {(r["preset"], cells[r["cell"]]): r["best"]["ttft_p99_s"] for r in rows if r["cell"] in cells}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--holds-s", default="5,10,20,30,60")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    holds = [0.0] + [float(h) for h in args.holds_s.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = [(p, cv) for p in args.presets.split(",") for cv in (None, 4.0)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futs = {(c, h, s): pool.submit(one, *c, s, {"last_instance_hold_s": h} if h else {})
                for c in cells for h in holds for s in seeds}
        runs = {k: f.result() for k, f in futs.items()}
    best = autoscale_best()
    first3 = [s for s in seeds if s in (0, 1, 2)]
    rows = []
    for c in cells:
        base = [runs[(c, 0.0, s)] for s in seeds]
        for h in holds[1:]:
            on = [runs[(c, h, s)] for s in seeds]
            ratio = [b["ttft_p99_s"] / a["ttft_p99_s"] for a, b in zip(base, on)]
            row = {"preset": c[0], "burst_cv": c[1], "hold_s": h, "seeds": seeds, "without": base, "with": on,
                   "p99_ratio": ratio, "p99_ratio_median": statistics.median(ratio),
                   "worse_seeds": sum(r > 1.0 for r in ratio),
                   "slo_difference_median": statistics.median(b["slo_attainment"] - a["slo_attainment"]
                                                              for a, b in zip(base, on)),
                   "gpu_seconds_ratio_median": statistics.median(b["gpu_seconds"] / a["gpu_seconds"]
                                                                 for a, b in zip(base, on))}
            if c in best and len(first3) == 3:
                ws = statistics.median(runs[(c, h, s)]["ttft_p99_s"] for s in first3)
                ws0 = statistics.median(runs[(c, 0.0, s)]["ttft_p99_s"] for s in first3)
                row["autoscale_best_over_warmserve"] = best[c] / ws
                row["autoscale_best_over_warmserve_registered"] = best[c] / ws0
            rows.append(row)
    print(f"warmserve's last_instance_hold_s, paired by seed over seeds {seeds} (medians over seeds)\n")
    print("| preset | burst CV | hold s | P99 with / without (seeds worse) | SLO difference | GPU-s ratio | "
          "autoscale's best / warmserve, seeds 0-2 (registered -> with the hold) |\n|---|---|---:|---|---:|---:|---|")
    for r in rows:
        a = (f"{r['autoscale_best_over_warmserve_registered']:.2f}x -> {r['autoscale_best_over_warmserve']:.2f}x"
             if "autoscale_best_over_warmserve" in r else "-")
        print(f"| {r['preset']} | {r['burst_cv'] or 'as traced'} | {r['hold_s']:g} | {r['p99_ratio_median']:.2f}x "
              f"({r['worse_seeds']} of {len(seeds)}) | {r['slo_difference_median']:+.3f} | "
              f"{r['gpu_seconds_ratio_median']:.3f}x | {a} |")
    if args.json:
        write_json_atomic(args.json, {"holds_s": holds[1:], "seeds": seeds, "rows": rows})
    if args.plot:
        plot(rows, holds[1:], args.plot)


def plot(rows: list[dict], holds: list[float], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for (preset, cv) in dict.fromkeys((r["preset"], r["burst_cv"]) for r in rows):
        mine = [r for r in rows if (r["preset"], r["burst_cv"]) == (preset, cv)]
        med = [r["p99_ratio_median"] for r in mine]
        lo = [m - min(r["p99_ratio"]) for m, r in zip(med, mine)]
        hi = [max(r["p99_ratio"]) - m for m, r in zip(med, mine)]
        ax.errorbar([r["hold_s"] for r in mine], med, yerr=[lo, hi], marker="o", capsize=3, alpha=0.8,
                    linestyle="-" if cv else ":", label=f"{preset}, {'burst CV 4' if cv else 'as traced'}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(holds, [f"{h:g}" for h in holds])
    ax.set_xlabel("last_instance_hold_s (s)")
    ax.set_ylabel("P99 TTFT with the hold / without\n(median of seeds; bars: min-max)")
    ax.set_title("warmserve: holding a quiet model's last instance")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
