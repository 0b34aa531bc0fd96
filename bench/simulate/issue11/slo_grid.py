"""SLO attainment of one policy over many seeds at a few rates: finer than the max-rate search (whose x2 bracketing
and 3 bisections resolve about 9%), for telling policy changes apart near the rate where the SLO is lost.

    python bench/simulate/issue11/slo_grid.py --preset paper-code --rate-scales 0.38,0.42,0.46 --seeds 0-5
    python bench/simulate/issue11/slo_grid.py --preset artifact-code --rate-scales 0.285,0.315,0.345 \
        --policy-option defragment=false

Per rate: the mean SLO attainment over the seeds, in how many seeds it reaches the 0.99 target, and the mean and
median P99 TTFT. Runs two seeds at a time (the build VM has 2 cores). With ``--plot PNG --from LABEL=JSON ...``
it draws grids written earlier instead: mean SLO attainment and mean P99 TTFT against offered rate, one column
per preset, one line per label."""

from __future__ import annotations

import argparse
import dataclasses
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from warmserve.policy.config import parse_policy_options
from warmserve.sim.presets import PRESETS
from warmserve.sim.runner import run_once

TARGET = 0.99


def _one(job: tuple) -> tuple[float, float]:
    preset_name, policy, rate_scale, seed, options, burst_cv = job
    preset = PRESETS[preset_name](**({"burst_cv": burst_cv} if burst_cv else {}))
    if options:
        cfg = dataclasses.replace(preset.config,
                                  policy_config=parse_policy_options(options, preset.config.policy_config))
        preset = dataclasses.replace(preset, config=cfg)
    r = run_once(preset, policy, rate_scale=rate_scale, seed=seed)
    return r.summary["slo_attainment"], r.summary["ttft_p99_s"]


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--policy", default="warmserve")
    p.add_argument("--rate-scales", help="comma-separated rate scales")
    p.add_argument("--seeds", default="0-5", help="'0-5' or '0,1,2'")
    p.add_argument("--policy-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--burst-cv", type=float, default=None, help="the preset's burst CV (default: as traced)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--plot", default=None, metavar="PNG", help="draw the grids of --from instead of running")
    p.add_argument("--from", dest="sources", action="append", default=[], metavar="LABEL=JSON",
                   help="with --plot: a grid written by --json, drawn as LABEL (repeat)")
    a = p.parse_args()
    if a.plot:
        if not a.sources or any("=" not in x for x in a.sources):
            p.error("--plot needs one --from LABEL=JSON or more")
        plot(a.plot, [tuple(x.split("=", 1)) for x in a.sources])
        return
    if not a.preset or not a.rate_scales:
        p.error("--preset and --rate-scales are required (unless --plot)")
    scales = [float(x) for x in a.rate_scales.split(",")]
    seeds = _seeds(a.seeds)
    jobs = [(a.preset, a.policy, s, seed, tuple(a.policy_option), a.burst_cv) for s in scales for seed in seeds]
    with ProcessPoolExecutor(a.workers) as ex:
        res = list(ex.map(_one, jobs))
    rows = []
    for i, s in enumerate(scales):
        part = res[i * len(seeds):(i + 1) * len(seeds)]
        slo, p99 = [x for x, _ in part], [y for _, y in part]
        row = {"preset": a.preset, "policy": a.policy, "options": a.policy_option, "burst_cv": a.burst_cv,
               "rate_scale": s, "seeds": seeds,
               "slo_mean": float(np.mean(slo)), "seeds_meeting_target": int(sum(x >= TARGET for x in slo)),
               "p99_mean_s": float(np.mean(p99)), "p99_median_s": float(np.median(p99)), "slo": slo, "p99_s": p99}
        rows.append(row)
        print(f"{a.preset} x{s}: SLO mean {row['slo_mean']:.4f} (>= {TARGET} in {row['seeds_meeting_target']}/"
              f"{len(seeds)} seeds), P99 mean {row['p99_mean_s']:.3f} s, median {row['p99_median_s']:.3f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


def plot(path: str, sources: list[tuple[str, str]]) -> None:
    """Mean SLO attainment (with the 0.99 target) and mean P99 TTFT against offered rate, one column per preset,
    one line per label."""
    from warmserve.extras import pyplot

    plt = pyplot("the SLO-grid plot")
    grids: dict[str, list[tuple[str, list[dict]]]] = {}
    for label, file in sources:
        with open(file) as f:
            rows = json.load(f)
        grids.setdefault(rows[0]["preset"], []).append((label, rows))
    fig, axes = plt.subplots(2, len(grids), figsize=(5.5 * len(grids), 7), squeeze=False)
    for col, (preset, runs) in enumerate(sorted(grids.items())):
        rate = PRESETS[preset]().base_rate_rps
        top, bottom = axes[0][col], axes[1][col]
        for label, rows in runs:
            x = [r["rate_scale"] * rate for r in rows]
            top.plot(x, [r["slo_mean"] for r in rows], "o-", label=label)
            bottom.plot(x, [r["p99_mean_s"] for r in rows], "o-", label=label)
        seeds = runs[0][1][0]["seeds"]
        top.axhline(TARGET, color="grey", ls=":", lw=1)
        top.set_title(f"{preset}, mean over seeds {seeds[0]}-{seeds[-1]}")
        top.set_ylabel("SLO attainment")
        bottom.set_ylabel("P99 TTFT, s")
        bottom.set_xlabel("offered rate, rps (rate scale x the preset's 24 rps)")
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
