"""warmserve's policy option ``scale_in_hold_s`` over a range of holds, beside `shared` and `dedicated`: SLO
attainment, P99 TTFT and GPU-seconds per cell, seeds 0-5. At burst CV 4 warmserve's misses are prompts queued
behind a burst's prefills on the one instance a model kept after the last burst (not waits for a start); a hold
keeps the instances a model wanted over the last hold seconds while no other model wants GPUs, trading
GPU-seconds for SLO attainment. The plot draws that frontier, one panel per cell.

    python bench/simulate/issue11/scale_in_hold.py --json bench/simulate/issue11/scale_in_hold.json \
        --plot bench/simulate/issue11/scale_in_hold.png > bench/simulate/issue11/scale_in_hold.txt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor

from paired_option import one  # this folder's script

from warmserve.outputs import write_json_atomic

PRESETS = ("paper-code", "artifact-code", "paper-conv", "artifact-conv")
#: (burst CV or None for as traced, rate scale)
REGIMES = ((None, 1.0), (4.0, 0.25), (4.0, 1.0))
HOLDS_S = (0.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BASELINES = ("shared", "dedicated")


def summary(runs: list[dict]) -> dict:
    """Median P99 and P50 over seeds, mean SLO attainment and GPU-seconds (as the rate sweeps count them)."""
    return {"ttft_p99_s": statistics.median(r["ttft_p99_s"] for r in runs),
            "ttft_p50_s": statistics.median(r["ttft_p50_s"] for r in runs),
            "slo_attainment": statistics.fmean(r["slo_attainment"] for r in runs),
            "gpu_seconds": statistics.fmean(r["gpu_seconds"] for r in runs)}


def label(cell: dict) -> str:
    cv = "as traced" if cell["burst_cv"] is None else f"burst CV {cell['burst_cv']:g}"
    return f"{cell['preset']}, {cv}, x{cell['rate_scale']:g}"


def plot(cells: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(REGIMES)
    fig, axes = plt.subplots(len(cells) // cols, cols, figsize=(5 * cols, 3.6 * len(cells) // cols), squeeze=False)
    for ax, cell in zip(axes.flat, cells):
        pts = [(h["summary"]["gpu_seconds"] / 1e3, h["summary"]["slo_attainment"], h["hold_s"]) for h in cell["holds"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="C0", label="warmserve, scale_in_hold_s")
        for x, y, h in pts:
            ax.annotate(f"{h:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        for name, marker, color in (("shared", "s", "C2"), ("dedicated", "^", "C3")):
            s = cell["baselines"][name]["summary"]
            ax.plot([s["gpu_seconds"] / 1e3], [s["slo_attainment"]], marker, color=color, label=name)
            pts.append((s["gpu_seconds"] / 1e3, s["slo_attainment"], None))
        lo = min(p[1] for p in pts)
        ax.set_ylim(min(lo - 0.005, 0.95), 1.002)  # a common scale: a spread of 0.001 is not drawn as a cliff
        ax.ticklabel_format(useOffset=False)
        ax.set_title(label(cell), fontsize=9)
        ax.set_xlabel("thousand GPU-seconds (mean of seeds)", fontsize=8)
        ax.set_ylabel("SLO attainment (mean)", fontsize=8)
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--replot", metavar="JSON", default=None, help="draw --plot from a JSON this wrote; run nothing")
    args = ap.parse_args()
    if args.replot:
        with open(args.replot) as f:
            plot(json.load(f)["cells"], args.plot or args.replot.removesuffix(".json") + ".png")
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = [(p, cv, x) for p in PRESETS for cv, x in REGIMES]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futs = {(c, h, s): pool.submit(one, c[0], c[1], s, {"scale_in_hold_s": h}, c[2])
                for c in grid for h in HOLDS_S for s in seeds}
        futs.update({(c, b, s): pool.submit(one, c[0], c[1], s, {}, c[2], policy=b)
                     for c in grid for b in BASELINES for s in seeds})
        cells = []
        for c in grid:
            holds = [{"hold_s": h, "seeds": [futs[(c, h, s)].result() for s in seeds]} for h in HOLDS_S]
            base = {b: {"seeds": [futs[(c, b, s)].result() for s in seeds]} for b in BASELINES}
            for row in holds + list(base.values()):
                row["summary"] = summary(row["seeds"])
            cells.append({"preset": c[0], "burst_cv": c[1], "rate_scale": c[2], "holds": holds, "baselines": base})
    print(f"seeds {seeds}; P99 / P50: medians over seeds; SLO attainment and GPU-seconds: means\n")
    print("| cell | policy | P99 TTFT s | P50 TTFT s | SLO attainment | GPU-s |\n|---|---|---:|---:|---:|---:|")
    for cell in cells:
        rows = [(f"warmserve, hold {h['hold_s']:g} s", h["summary"]) for h in cell["holds"]]
        rows += [(b, cell["baselines"][b]["summary"]) for b in BASELINES]
        for name, s in rows:
            print(f"| {label(cell)} | {name} | {s['ttft_p99_s']:.3f} | {s['ttft_p50_s']:.3f} | "
                  f"{s['slo_attainment']:.3f} | {s['gpu_seconds']:.0f} |")
    if args.json:
        write_json_atomic(args.json, {"seeds": seeds, "holds_s": list(HOLDS_S), "cells": cells})
    if args.plot:
        plot(cells, args.plot)


if __name__ == "__main__":
    main()
