"""A policy option seed by seed: a policy (warmserve unless --policy) with and without it on the same replayed
workloads, P99 TTFT ratio and SLO attainment difference per seed (which medians over seeds hide behind the
seed-to-seed spread).

    python bench/simulate/issue11/paired_option.py kv_shrink_on_demand=true \
        --json bench/simulate/issue11/kv_shrink_on_demand_paired.json
"""

from __future__ import annotations

import argparse
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from warmserve.outputs import write_json_atomic


def one(preset: str, burst_cv: float | None, seed: int, options: dict, rate_scale: float = 1.0,
        policy: str = "warmserve") -> dict:
    """``policy`` with ``options`` on one replay: its P99 and P50 TTFT, SLO attainment, GPU-seconds and P50 TPOT."""
    import warmserve.policy.registry as registry
    from warmserve.sim.presets import PRESETS
    from warmserve.sim.simulator import Simulator

    base = registry.POLICIES[policy]
    registry.POLICIES[policy] = replace(base, overrides={**base.overrides, **options})
    try:  # restored: a pool process runs several of these
        p = PRESETS[preset](**({"burst_cv": burst_cv} if burst_cv else {}))
        r = Simulator(p.build(rate_scale, seed), p.models, policy, config=p.config).run().summary
    finally:
        registry.POLICIES[policy] = base
    return {k: r[k] for k in ("ttft_p99_s", "ttft_p50_s", "slo_attainment", "gpu_seconds", "tpot_p50_s")}


def main() -> None:
    from warmserve.policy.config import policy_config_from_dict

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("options", nargs="+", metavar="KEY=VALUE", help="the policy options to pair against it")
    ap.add_argument("--presets", default="paper-code,artifact-code")
    ap.add_argument("--burst-cvs", default="none,4", help="comma-separated; none: as traced")
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--policy", default="warmserve", help="the policy to pair (its registered options, plus these)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    given = dict(o.split("=", 1) for o in args.options)
    cfg = policy_config_from_dict(given)  # checked and typed as the CLI's --policy-option
    options = {k: getattr(cfg, k) for k in given}
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = [(p, None if c == "none" else float(c)) for p in args.presets.split(",") for c in args.burst_cvs.split(",")]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futs = {(c, s, on): pool.submit(one, *c, s, options if on else {}, policy=args.policy) for c in cells
                for s in seeds for on in (False, True)}
        rows = []
        for c in cells:
            off = [futs[(c, s, False)].result() for s in seeds]
            on = [futs[(c, s, True)].result() for s in seeds]
            ratio = [b["ttft_p99_s"] / a["ttft_p99_s"] for a, b in zip(off, on)]
            slo = [b["slo_attainment"] - a["slo_attainment"] for a, b in zip(off, on)]
            rows.append({"preset": c[0], "burst_cv": c[1], "seeds": seeds, "without": off, "with": on,
                         "p99_ratio": ratio, "slo_difference": slo})
    print(f"| preset | burst CV | P99 with / without {args.options}, per seed (median) | SLO attainment difference "
          "per seed | P99 medians without / with |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['burst_cv'] or 'as traced'} | {' / '.join(f'{x:.2f}' for x in r['p99_ratio'])} "
              f"({statistics.median(r['p99_ratio']):.2f}x) | {' / '.join(f'{x:+.3f}' for x in r['slo_difference'])} | "
              f"{statistics.median(x['ttft_p99_s'] for x in r['without']):.3f} / "
              f"{statistics.median(x['ttft_p99_s'] for x in r['with']):.3f} s |")
    if args.json:
        write_json_atomic(args.json, {"policy": args.policy, "options": options, "rows": rows})


if __name__ == "__main__":
    main()
