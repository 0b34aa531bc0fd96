"""Plot the simulated twin against live, per run and policy, for several twin variants (retwin.py's JSON files).

    python bench/replay/plot_twins.py bench/replay/twins_no_host_cores.json bench/replay/twins_host_cores.json \
        --labels "no host term,host term" --out bench/replay/twins_host_cores.png

One panel per policy and percentile (P50, P99): for each live run (x axis), twin / live TTFT of every variant,
with the 0.75-1.25 band shaded (the issue's "within 25%")."""

from __future__ import annotations

import argparse
import json
import os
import sys

#: the y axis's ticks (twin / live); the shaded band is 0.75-1.25
TICKS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="retwin.py --json outputs, one per twin variant")
    p.add_argument("--labels", default=None, help="comma-separated legend labels, one per file (default: names)")
    p.add_argument("--out", required=True, help="PNG to write")
    a = p.parse_args()
    labels = a.labels.split(",") if a.labels else [os.path.splitext(os.path.basename(f))[0] for f in a.files]
    if len(labels) != len(a.files):
        print(f"plot_twins: {len(labels)} labels for {len(a.files)} files", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = []
    for f in a.files:
        with open(f) as fh:
            variants.append(json.load(fh))
    runs = [os.path.splitext(os.path.basename(e["file"]))[0].removeprefix("results_") for e in variants[0]]
    policies = sorted({pol for e in variants[0] for pol in e["policies"]})
    fig, axes = plt.subplots(len(policies), 2, figsize=(13, 3.2 * len(policies)), sharex=True, squeeze=False)
    for row, pol in enumerate(policies):
        for col, key in enumerate(("sim_over_live_p50", "sim_over_live_p99")):
            ax = axes[row][col]
            ax.axhspan(0.75, 1.25, color="0.9", zorder=0)
            ax.axhline(1.0, color="0.6", lw=0.8, zorder=1)
            for k, (label, data) in enumerate(zip(labels, variants)):
                xs, ys = [], []
                for i, e in enumerate(data):
                    r = e["policies"].get(pol)
                    if r is not None:
                        xs.append(i + (k - (len(variants) - 1) / 2) * 0.12)
                        ys.append(r[key])
                ax.plot(xs, ys, "o", label=label, zorder=2)
            ax.set_yscale("log")
            ax.set_yticks(TICKS)
            ax.set_yticklabels([f"{t:g}x" for t in TICKS])
            ax.minorticks_off()
            ax.set_title(f"{pol}: twin / live TTFT {key[-3:].upper()}")
            ax.set_xticks(range(len(runs)))
            ax.set_xticklabels(runs, rotation=60, ha="right", fontsize=7)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=len(names), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
