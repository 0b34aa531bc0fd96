"""`autoscale`'s best setting over six seeds: the union of the settings the three searches of this folder try
(``autoscale_best.py``'s thirteen, ``autoscale_overflow.py``'s prefill-overflow routing at 30-300 s windows,
``autoscale_keepalive.py``'s keep-alives at 60 and 300 s windows), each run over the same seeds as warmserve,
which is simulated here beside it. Each of those searches takes the best of many settings' medians over three
seeds, so its best is partly the luckiest draw (paper-code as traced: 3.72 s at a 300 s window and a 60 s
keep-alive over seeds 0-2, 5.38 s over seeds 0-5); more seeds shrink that bias. Prints the best setting per cell,
its P99 seed by seed beside warmserve's, and the ratio of the medians.

    python bench/simulate/issue11/autoscale_seeds6.py --json bench/simulate/issue11/autoscale_seeds6.json
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor

from autoscale_best import CELLS, SETTINGS, load_reuse, positive_int, with_other_cells  # this folder's scripts
from autoscale_keepalive import KEEP_ALIVES_S, warmserve_at
from autoscale_keepalive import WINDOWS_S as KEEP_WINDOWS_S
from autoscale_migrate import run
from autoscale_overflow import WINDOWS_S as OVERFLOW_WINDOWS_S

from warmserve.outputs import write_json_atomic


def settings() -> list[dict]:
    """Every setting the three searches try, each a dict of autoscale's options, without repeats."""
    out = [{"migrate_max_in_flight": k, "scale_in_floor_now": floor, "load_window_s": w, "scale_out_now": now}
           for k, floor, w, now in SETTINGS]
    out += [{"migrate_max_in_flight": 0, "scale_in_floor_now": False, "load_window_s": w, "scale_out_now": now,
             "route_prefill_overflow": True} for w in OVERFLOW_WINDOWS_S for now in (False, True)]
    out += [{"migrate_max_in_flight": 0, "scale_in_floor_now": False, "load_window_s": w, "scale_out_now": False,
             "min_lifetime_s": k} for w in KEEP_WINDOWS_S for k in KEEP_ALIVES_S if k != 5.0]
    return out


def one(preset: str, name: str, seeds, setting: dict) -> dict:
    _, cv, cs = CELLS[name]
    options = {k: v for k, v in setting.items() if k not in ("migrate_max_in_flight", "scale_in_floor_now")}
    r = run(preset, setting["migrate_max_in_flight"], seeds, cv, cs, setting["scale_in_floor_now"], options)
    print(f"  {preset} {name} {setting}: P99 {r['ttft_p99_s']:.2f} s", flush=True)
    return {**setting, "ttft_p99_s": r["ttft_p99_s"], "ttft_p99_s_per_seed": r["ttft_p99_s_per_seed"],
            "slo_attainment": r["slo_attainment"], "gpu_seconds": r["gpu_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="paper-code,artifact-code")
    ap.add_argument("--cells", default="traced_14s,traced_35s")
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--json", default=None)
    ap.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1,
                    help="processes (default: one per core)")
    ap.add_argument("--reuse", default=None, metavar="JSON",
                    help="take autoscale's settings from this earlier output instead of running them, and simulate "
                         "warmserve again (after a change to warmserve alone)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = [(p, n) for p in args.presets.split(",") for n in args.cells.split(",")]
    grid = settings()
    earlier, kept = load_reuse(args.reuse, seeds, "settings", cells, {"settings": len(grid)}) if args.reuse \
        else (None, [])
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futs = {c: [] if earlier else [pool.submit(one, *c, seeds, st) for st in grid] for c in cells}
        ws_futs = {c: pool.submit(warmserve_at, *c, seeds, 1.0) for c in cells}  # simulated at the preset's tick
        rows = []
        for (p, n), fs in futs.items():
            ws = ws_futs[(p, n)].result()
            runs = earlier[(p, n)] if earlier else [f.result() for f in fs]
            best = min(runs, key=lambda r: r["ttft_p99_s"])
            rows.append({"preset": p, "cell": n, "warmserve": ws, "settings": runs, "best": best,
                         "ratio_best": best["ttft_p99_s"] / ws["ttft_p99_s"],
                         "gpu_ratio_best": best["gpu_seconds"] / ws["gpu_seconds"]})
            if args.json:  # after every cell, so that a run cut short keeps what finished
                write_json_atomic(args.json, {"seeds": seeds, "settings": len(grid),
                                              "rows": with_other_cells(kept, rows)})
    print(f"| preset | cell | autoscale's best of {len(grid)} settings | its P99 by seed, s | warmserve's, s | "
          "ratio of the medians (its GPU-s / warmserve's) |\n|---|---|---|---|---|---|")
    for r in rows:
        b, ws = r["best"], r["warmserve"]
        name = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in b.items()
                         if k in ("load_window_s", "scale_out_now", "route_prefill_overflow", "min_lifetime_s",
                                  "migrate_max_in_flight", "scale_in_floor_now"))
        print(f"| {r['preset']} | {r['cell']} | {name}: {b['ttft_p99_s']:.2f} s | "
              f"{' / '.join(f'{x:.2f}' for x in b['ttft_p99_s_per_seed'])} | "
              f"{' / '.join(f'{x:.2f}' for x in ws['ttft_p99_s_per_seed'])} | "
              f"{r['ratio_best']:.2f}x ({r['gpu_ratio_best']:.2f}x) |")


if __name__ == "__main__":
    main()
