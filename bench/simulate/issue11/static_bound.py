"""How much any dynamic policy could gain over the best static layout, read off the trace alone.

A static layout (`shared`, `dedicated`) must give each model the capacity of that model's own peak. A policy that
moves GPUs between models every R seconds needs, in each R-second window, only the sum of the models' peaks
within that window. So on a capacity-bound workload the ratio

    gain(R) = sum over models of the model's peak  /  max over R-windows of (sum over models of its peak there)

bounds the max-rate ratio of a dynamic policy to the best static layout from above. Zero-cost moves are assumed
(R is the time from a load change to serving on the moved GPUs), and GPUs are treated as divisible (a 70B
instance is 4 GPUs or nothing), both in the dynamic policy's favour. Demand is compute: 2 x parameters x
(prompt + output tokens) arriving per second in bins of `--bin-s` (the time over which a queue can absorb a
burst without missing a TTFT SLO of 0.35-1 s). Peaks are maxima. The 0.99 SLO target lets a policy give up 1% of
requests, which both sides could spend on their worst bins; the bound ignores that (trimming each side's top
bins separately breaks the inequality static >= dynamic), so it is a fluid estimate, not a theorem.

    python bench/simulate/issue11/static_bound.py --seeds 0,1,2 --json bench/simulate/issue11/static_bound.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from warmserve.sim.costmodel import MODEL_COSTS
from warmserve.sim.presets import PRESETS


def demand(preset_name: str, seed: int, bin_s: float, burst_cv: float | None) -> np.ndarray:
    """[models, bins] FLOPs/s arriving per bin over the replayed 20 minutes."""
    preset = PRESETS[preset_name](**({"burst_cv": burst_cv} if burst_cv else {}))
    tr = preset.build(1.0, seed).trace
    size = {m.name: m.size for m in preset.models}
    start = float(tr.arrival_s.min())
    n_bins = int(np.ceil((float(tr.arrival_s.max()) - start + 1e-9) / bin_s))
    out = np.zeros((len(tr.models), n_bins))
    b = ((tr.arrival_s - start) // bin_s).astype(int)
    params = np.array([MODEL_COSTS[size.get(m, m)].weight_bytes / 2 for m in tr.models])  # 2-byte weights
    flops = 2 * params[tr.model] * (tr.prompt_tokens + tr.output_tokens)
    np.add.at(out, (tr.model, b), flops)
    return out / bin_s


def gain(d: np.ndarray, react_s: float, bin_s: float) -> float:
    static = d.max(axis=1).sum()
    per = max(1, int(round(react_s / bin_s)))
    n = d.shape[1] // per
    windows = d[:, :n * per].reshape(d.shape[0], n, per).max(axis=2).sum(axis=0)  # [windows]
    return float(static / windows.max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="paper-conv,paper-code,artifact-conv,artifact-code")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--bin-s", default="1,5,10", help="comma-separated bin widths, seconds")
    p.add_argument("--react-s", default="bin,10,30,60", help="comma-separated R, seconds ('bin' = the bin width)")
    p.add_argument("--burst-cv", type=float, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    print(f"gain(R) = static layout's capacity / a policy moving GPUs every R s (median over seeds {seeds})"
          + (f", burst CV {a.burst_cv}" if a.burst_cv else ", as traced"))
    for preset in a.presets.split(","):
        for bin_s in map(float, a.bin_s.split(",")):
            ds = [demand(preset, s, bin_s, a.burst_cv) for s in seeds]
            cells = []
            for r in a.react_s.split(","):
                react = bin_s if r == "bin" else float(r)
                if react < bin_s:
                    continue
                if cells and react == bin_s:
                    continue  # 'bin' and a number equal to it
                g = float(np.median([gain(d, react, bin_s) for d in ds]))
                cells.append(f"R={react:g}s {g:.2f}x")
                rows.append({"preset": preset, "bin_s": bin_s, "react_s": react,
                             "burst_cv": a.burst_cv, "gain": g, "seeds": seeds})
            print(f"{preset:14s} bin {bin_s:4g} s: " + "  ".join(cells))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
