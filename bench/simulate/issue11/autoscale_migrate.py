"""`autoscale` with request migration: the baseline's registered settings (policy.registry, which fixes
``migrate_max_in_flight = 0`` for the name) with only that knob changed, to show which setting is its best.

    python bench/simulate/issue11/autoscale_migrate.py --preset paper-conv --burst-cv 4 --migrate 0,8
    python bench/simulate/issue11/autoscale_migrate.py --preset paper-code --cold-start-s 35 --burst-cv 4 --migrate 8
    python bench/simulate/issue11/autoscale_migrate.py --preset paper-code --migrate 0 --scale-in-floor-now true

Prints, per value, the median P99 TTFT and the mean SLO attainment over the seeds (as `warmserve simulate`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace

import warmserve.policy.registry as registry
from warmserve.sim.costmodel import CostModel
from warmserve.sim.presets import PRESETS
from warmserve.sim.simulator import Simulator


def run(preset_name: str, k: int, seeds, burst_cv: float | None, cold_start_s: float | None,
        floor_now: bool | None = None, options: dict | None = None, tick_s: float | None = None) -> dict:
    """options: further policy options set over the registered ones (autoscale_best.py's load windows);
    tick_s: the policy's tick in place of the preset's (autoscale_keepalive.py --tick-s)."""
    base = registry.POLICIES["autoscale"]
    extra = ({} if floor_now is None else {"scale_in_floor_now": floor_now}) | (options or {})
    registry.POLICIES["autoscale"] = replace(base, overrides={**base.overrides, "migrate_max_in_flight": k, **extra})
    try:
        preset = PRESETS[preset_name](**({"burst_cv": burst_cv} if burst_cv else {}))
        cost = CostModel.for_gpu(preset.config.gpu)
        if cold_start_s is not None:
            cost = cost.with_cold_start_s(cold_start_s)
        cfg = preset.config if tick_s is None else replace(preset.config, tick_s=tick_s)
        rows = [Simulator(preset.build(1.0, s), preset.models, "autoscale", config=cfg, cost=cost).run().summary
                for s in seeds]
    finally:
        registry.POLICIES["autoscale"] = base
    return {"migrate_max_in_flight": k, "ttft_p99_s": statistics.median(r["ttft_p99_s"] for r in rows),
            "slo_attainment": statistics.mean(r["slo_attainment"] for r in rows),
            "gpu_seconds": statistics.median(r["gpu_seconds"] for r in rows),
            "requests_migrated": [r["requests_migrated"] for r in rows],
            "ttft_p99_s_per_seed": [r["ttft_p99_s"] for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--migrate", default="0,8", help="comma-separated migrate_max_in_flight values")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--burst-cv", type=float, default=None)
    ap.add_argument("--cold-start-s", type=float, default=None)
    ap.add_argument("--scale-in-floor-now", choices=["true", "false"], default=None,
                    help="also set autoscale's scale_in_floor_now (default: its registered setting, off)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = []
    floor_now = None if args.scale_in_floor_now is None else args.scale_in_floor_now == "true"
    for k in (int(x) for x in args.migrate.split(",")):
        r = run(args.preset, k, seeds, args.burst_cv, args.cold_start_s, floor_now)
        if floor_now is not None:
            r["scale_in_floor_now"] = floor_now
        out.append(r)
        print(f"{args.preset} burst_cv={args.burst_cv} cold_start_s={args.cold_start_s} autoscale "
              f"scale_in_floor_now={args.scale_in_floor_now or 'registered'} migrate_max_in_flight={k}: "
              f"P99 TTFT {r['ttft_p99_s']:.2f} s, SLO {r['slo_attainment']:.4f}, "
              f"moved {r['requests_migrated']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "burst_cv": args.burst_cv, "cold_start_s": args.cold_start_s,
                       "seeds": seeds, "runs": out}, f, indent=1)


if __name__ == "__main__":
    main()
