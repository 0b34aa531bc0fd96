"""`autoscale` given warmserve's 10 s hold of a quiet model's last instance (``last_instance_hold_s``, warmserve's
default since 2026-12-05), which its registry entry fixes at 0 (the paper's reactive baseline): per headline cell,
the registered setting and the cell's best of ``autoscale_best.py``'s thirteen, each with and without the hold,
over the same seeds, beside warmserve's P99 from the headline file. Shows whether the hold, offered to the
baseline too, moves its best (a fair operator could set it).

    python bench/simulate/issue11/autoscale_hold.py --json bench/simulate/issue11/autoscale_hold.json \
        > bench/simulate/issue11/autoscale_hold.txt
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor

from autoscale_best import CELLS, positive_int  # this folder's scripts
from autoscale_migrate import run

from warmserve.outputs import write_json_atomic

HERE = os.path.dirname(os.path.abspath(__file__))
HOLD_S = 10.0


def one(preset: str, cell: str, seeds, setting: dict, hold_s: float) -> dict:
    _, cv, cs = CELLS[cell]
    options = {"load_window_s": setting["load_window_s"], "scale_out_now": setting["scale_out_now"],
               "last_instance_hold_s": hold_s}
    r = run(preset, setting["migrate_max_in_flight"], seeds, cv, cs, setting["scale_in_floor_now"], options)
    return {"ttft_p99_s": r["ttft_p99_s"], "slo_attainment": r["slo_attainment"], "gpu_seconds": r["gpu_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--best", default=os.path.join(HERE, "autoscale_best.json"))
    ap.add_argument("--cells", default="traced_14s,cv4_14s")
    ap.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    unknown = [c for c in args.cells.split(",") if c not in CELLS]
    if unknown:
        ap.error(f"--cells {args.cells!r}: unknown {', '.join(unknown)}; choose from {', '.join(CELLS)}")
    with open(args.best) as f:
        best = json.load(f)
    seeds = best["seeds"]
    rows = [r for r in best["rows"] if r["cell"] in args.cells.split(",")]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futs = [(r, {(which, h): pool.submit(one, r["preset"], r["cell"], seeds, st, h)
                     for which, st in (("registered", r["settings"][0]), ("best", r["best"])) for h in (0.0, HOLD_S)})
                for r in rows]
        out = {"seeds": seeds, "hold_s": HOLD_S, "rows": []}
        print(f"| preset | cell | warmserve P99 s | autoscale registered: P99 s without / with a {HOLD_S:g} s hold | "
              f"its best of 13: without / with | ratio to warmserve, best without / with |\n|---|---|---|---|---|---|")
        for r, fs in futs:
            res = {f"{w}_hold{h:g}": f.result() for (w, h), f in fs.items()}
            ws = r["warmserve_p99_s"]
            out["rows"].append({"preset": r["preset"], "cell": r["cell"], "warmserve_p99_s": ws, **res})
            g = {k: v["ttft_p99_s"] for k, v in res.items()}
            print(f"| {r['preset']} | {r['cell']} | {ws:.2f} | {g['registered_hold0']:.2f} / "
                  f"{g[f'registered_hold{HOLD_S:g}']:.2f} | {g['best_hold0']:.2f} / {g[f'best_hold{HOLD_S:g}']:.2f} | "
                  f"{g['best_hold0'] / ws:.2f}x / {g[f'best_hold{HOLD_S:g}'] / ws:.2f}x |", flush=True)
            if args.json:
                write_json_atomic(args.json, out)


if __name__ == "__main__":
    main()
