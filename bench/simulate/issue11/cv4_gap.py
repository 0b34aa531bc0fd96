"""Where warmserve's SLO attainment at burst CV 4 goes, against `shared` and `dedicated`: warmserve as registered,
with a scale-in hold (``scale_in_hold_s`` 300, yielding to models that want GPUs), with no instance ever stopped
(``min_lifetime_s`` 1e6: grow-only, standing capacity without the hold's yielding), that with KV reservation off
(no KV page mapped again on a prefill's path), then `dedicated` and `shared` (searched layouts); last, the hold and
both baselines with ``route_least_prefill`` (every policy may route by prefill backlog; the rows before pin it off).
Seeds 0-5, the four presets at burst CV 4 and the traced rate.

    python bench/simulate/issue11/cv4_gap.py --json bench/simulate/issue11/cv4_gap.json \
        > bench/simulate/issue11/cv4_gap.txt
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor

from paired_option import one  # this folder's scripts
from scale_in_hold import PRESETS, summary

from warmserve.outputs import write_json_atomic

#: (row name, policy, its options) in the order the gap closes, then with route_least_prefill. The rows before
#: those route by the fewest requests in flight, as every policy did when the file was written: route_least_prefill
#: has been the default since, and pinning it off keeps cv4_gap.json reproducible and the last rows a contrast.
ROUTE, IN_FLIGHT = {"route_least_prefill": True}, {"route_least_prefill": False}
STEPS = (("warmserve", "warmserve", IN_FLIGHT),
         ("+ scale_in_hold_s 300", "warmserve", {"scale_in_hold_s": 300.0, **IN_FLIGHT}),
         ("grow-only (min_lifetime_s 1e6)", "warmserve", {"min_lifetime_s": 1e6, **IN_FLIGHT}),
         ("grow-only, KV reservation off", "warmserve", {"min_lifetime_s": 1e6, "kv_reservation": False, **IN_FLIGHT}),
         ("dedicated", "dedicated", IN_FLIGHT),
         ("shared", "shared", IN_FLIGHT),
         ("warmserve, scale_in_hold_s 300, route_least_prefill", "warmserve", {"scale_in_hold_s": 300.0, **ROUTE}),
         ("dedicated, route_least_prefill", "dedicated", ROUTE),
         ("shared, route_least_prefill", "shared", ROUTE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--burst-cv", type=float, default=4.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futs = {(p, name, s): pool.submit(one, p, args.burst_cv, s, opts, policy=pol) for p in PRESETS
                for name, pol, opts in STEPS for s in seeds}
        rows = []
        for p in PRESETS:
            for name, _, _ in STEPS:
                runs = [futs[(p, name, s)].result() for s in seeds]
                rows.append({"preset": p, "row": name, "seeds": runs, "summary": {
                    **summary(runs), "tpot_p50_s": sorted(r["tpot_p50_s"] for r in runs)[len(runs) // 2]}})
    print(f"burst CV {args.burst_cv:g}, traced rate, seeds {seeds}; SLO attainment and GPU-seconds: means; "
          "TTFT and TPOT: medians over seeds\n")
    print("| preset | policy | SLO attainment | P50 TTFT s | P99 TTFT s | P50 TPOT s | GPU-s |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        s = r["summary"]
        print(f"| {r['preset']} | {r['row']} | {s['slo_attainment']:.3f} | {s['ttft_p50_s']:.3f} | "
              f"{s['ttft_p99_s']:.3f} | {s['tpot_p50_s']:.4f} | {s['gpu_seconds']:.0f} |")
    if args.json:
        write_json_atomic(args.json, {"seeds": seeds, "burst_cv": args.burst_cv,
                                      "steps": [{"row": n, "policy": p, "options": o} for n, p, o in STEPS],
                                      "rows": rows})


if __name__ == "__main__":
    main()
