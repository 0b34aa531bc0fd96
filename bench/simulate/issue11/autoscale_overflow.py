"""`autoscale` with prefill-overflow routing, which its best of thirteen settings (``autoscale_best.py``) never turned
on: found in review (2026-11-30), its registry fixes ``route_prefill_overflow`` off, on the strength of a run at the
5 s load window before the scale-in fix, and on paper-code as traced at 14 s its 300 s window's P99 fell from 10.11 s
to 7.04 s with it on. Per cell of ``autoscale_best.json``: overflow on at each long load window (30, 60, 120,
300 s), ``scale_out_now`` as in the cell's best setting, over the same seeds; the cell's best of the thirteen and of
these together, and its ratio to warmserve's P99 (read from the same file). Written after every cell.

    python bench/simulate/issue11/autoscale_overflow.py --json bench/simulate/issue11/autoscale_overflow.json
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor

from autoscale_best import CELLS, load_reuse, positive_int, with_other_cells
from autoscale_migrate import run

from warmserve.outputs import write_json_atomic

HERE = os.path.dirname(os.path.abspath(__file__))
WINDOWS_S = (30.0, 60.0, 120.0, 300.0)


def one(preset: str, name: str, seeds, window_s: float, now: bool) -> dict:
    _, cv, cs = CELLS[name]
    r = run(preset, 0, seeds, cv, cs, False, {"load_window_s": window_s, "scale_out_now": now,
                                              "route_prefill_overflow": True})
    print(f"  {preset} {name} window={window_s:g} s out_now={now} overflow: P99 {r['ttft_p99_s']:.3f} s", flush=True)
    return {"load_window_s": window_s, "scale_out_now": now, "route_prefill_overflow": True,
            "ttft_p99_s": r["ttft_p99_s"], "slo_attainment": r["slo_attainment"], "gpu_seconds": r["gpu_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--best", default=os.path.join(HERE, "autoscale_best.json"))
    ap.add_argument("--presets", default="paper-code,artifact-code,paper-conv,artifact-conv")
    ap.add_argument("--jobs", type=positive_int, default=2)
    ap.add_argument("--json", required=True)
    ap.add_argument("--reuse", default=None, metavar="JSON",
                    help="take the overflow runs from this earlier output instead of running them, and only read "
                         "warmserve's figures (and autoscale's best of 13) from --best again, after a change to "
                         "warmserve alone; each cell's best of 13 must still name the scale_out_now those ran with")
    args = ap.parse_args()
    with open(args.best) as f:
        best = json.load(f)
    seeds = best["seeds"]
    presets = args.presets.split(",")
    rows = [r for p in presets for r in best["rows"] if r["preset"] == p]
    out = {"seeds": seeds, "best_file": os.path.basename(args.best), "rows": []}
    earlier, kept = None, []
    if args.reuse:
        earlier, kept = load_reuse(args.reuse, seeds, "overflow", [(r["preset"], r["cell"]) for r in rows])
        for r in rows:
            runs = earlier[(r["preset"], r["cell"])]
            if any(x["scale_out_now"] != r["best"]["scale_out_now"] for x in runs):
                raise SystemExit(f"--reuse {args.reuse}: {r['preset']} {r['cell']} ran with another scale_out_now "
                                 f"than its best of 13 now has ({r['best']['scale_out_now']}): run it without --reuse")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futs = [(r, [] if earlier else [pool.submit(one, r["preset"], r["cell"], seeds, w, r["best"]["scale_out_now"])
                                        for w in WINDOWS_S]) for r in rows]
        for r, fs in futs:
            runs = earlier[(r["preset"], r["cell"])] if earlier else [f.result() for f in fs]
            top = min(runs, key=lambda x: x["ttft_p99_s"])
            new_best = top if top["ttft_p99_s"] < r["best"]["ttft_p99_s"] else r["best"]
            ws = r["warmserve_p99_s"]
            out["rows"].append({"preset": r["preset"], "cell": r["cell"], "warmserve_p99_s": ws,
                                "best_of_13": r["best"], "ratio_best_of_13": r["ratio_best"], "overflow": runs,
                                "best": new_best, "ratio_best": new_best["ttft_p99_s"] / ws,
                                "gpu_ratio_best": new_best["gpu_seconds"] / r["warmserve_gpu_seconds"]})
            print(f"{r['preset']} {r['cell']}: best of 13 {r['ratio_best']:.2f}x, with overflow "
                  f"{new_best['ttft_p99_s'] / ws:.2f}x", flush=True)
            write_json_atomic(args.json, {**out, "rows": with_other_cells(kept, out["rows"])})


if __name__ == "__main__":
    main()
