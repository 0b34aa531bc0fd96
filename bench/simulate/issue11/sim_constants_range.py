"""Two simulator settings the audit of issue 11 left without a measurement beside them, each run at its
alternative with everything else as in the headline files, so the range they put on the figures is shown:

- ``CostModel.activation_s``, 0.1 s (``LEGACY_ACTIVATION_S``, an earlier assumption) against the 6.51 ms that
  ``warmserve bench switch --backend cuda`` measured on an H200 for 9.97 GiB of weights
  (``ACTIVATION_MEASURED_H200_S``). Only warmserve's starts pay it (a prewarm hit, or a prewarmed engine
  loading cold), so only warmserve is run at it.
- ``SimConfig.tick_s``, the policy's tick: 1 s in the simulator, 0.5 s in the live controller
  (``ControllerConfig.tick_s``). Both policies are run at 0.5 s: `autoscale` as registered and at its best
  keep-alive setting of the code presets (``autoscale_keepalive.json``), warmserve as registered.

    python bench/simulate/issue11/sim_constants_range.py --json bench/simulate/issue11/sim_constants_range.json

Medians over seeds 0-2 of P99 TTFT, as `warmserve simulate --seeds 0,1,2`; the registered rows are checked equal
to the headline files (a stale file stops the script instead of mixing trees).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from autoscale_best import CELLS, HERE  # this folder's scripts

import warmserve.policy.registry as registry
from warmserve.sim.costmodel import ACTIVATION_MEASURED_H200_S, CostModel
from warmserve.sim.presets import PRESETS
from warmserve.sim.simulator import Simulator

LIVE_TICK_S = 0.5


def run(preset_name: str, cell: str, policy: str, seeds, activation_s: float | None, tick_s: float | None,
        options: dict | None) -> dict:
    _, cv, cs = CELLS[cell]
    base = registry.POLICIES[policy]
    if options:
        registry.POLICIES[policy] = replace(base, overrides={**base.overrides, **options})
    try:
        preset = PRESETS[preset_name](**({"burst_cv": cv} if cv else {}))
        cost = CostModel.for_gpu(preset.config.gpu)
        if cs is not None:
            cost = cost.with_cold_start_s(cs)
        if activation_s is not None:
            cost = replace(cost, activation_s=activation_s)
        cfg = preset.config if tick_s is None else replace(preset.config, tick_s=tick_s)
        rows = [Simulator(preset.build(1.0, s), preset.models, policy, config=cfg, cost=cost).run().summary
                for s in seeds]
    finally:
        registry.POLICIES[policy] = base
    out = {"preset": preset_name, "cell": cell, "policy": policy, "activation_s": activation_s, "tick_s": tick_s,
           "options": options or {}, "ttft_p99_s": statistics.median(r["ttft_p99_s"] for r in rows),
           "slo_attainment": statistics.mean(r["slo_attainment"] for r in rows),
           "gpu_seconds": statistics.median(r["gpu_seconds"] for r in rows)}
    print(f"  {preset_name} {cell} {policy} {options or ''} activation={activation_s} tick={tick_s}: "
          f"P99 {out['ttft_p99_s']:.3f} s", flush=True)
    return out


def best_keepalive() -> dict:
    """(preset, cell) -> autoscale's best keep-alive setting (autoscale_keepalive.json)."""
    with open(os.path.join(HERE, "autoscale_keepalive.json")) as f:
        rows = json.load(f)["rows"]
    out = {}
    for r in rows:
        b = min(r["settings"], key=lambda s: s["ttft_p99_s"])
        out[(r["preset"], r["cell"])] = {"load_window_s": b["load_window_s"], "min_lifetime_s": b["min_lifetime_s"]}
    return out


def headline(preset: str, cell: str, policy: str) -> float:
    with open(os.path.join(HERE, preset.replace("-", "_") + CELLS[cell][0] + ".json")) as f:
        return json.load(f)["policies"][policy]["ttft_p99_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="paper-conv,paper-code,artifact-conv,artifact-code")
    ap.add_argument("--cells", default="traced_14s,cv4_14s")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: one per core)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    keep = best_keepalive()
    jobs = []
    for p in args.presets.split(","):
        for c in args.cells.split(","):
            jobs += [(p, c, "warmserve", None, None, None), (p, c, "warmserve", ACTIVATION_MEASURED_H200_S, None, None),
                     (p, c, "warmserve", None, LIVE_TICK_S, None), (p, c, "autoscale", None, None, None),
                     (p, c, "autoscale", None, LIVE_TICK_S, None)]
            if (p, c) in keep:
                jobs += [(p, c, "autoscale", None, None, keep[(p, c)]),
                         (p, c, "autoscale", None, LIVE_TICK_S, keep[(p, c)])]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(run, *zip(*[(j[0], j[1], j[2], seeds, j[3], j[4], j[5]) for j in jobs])))
    for r in runs:
        if r["activation_s"] is None and r["tick_s"] is None and not r["options"]:
            want = headline(r["preset"], r["cell"], r["policy"])
            if abs(r["ttft_p99_s"] - want) > 1e-6 * max(1.0, want):
                raise SystemExit(f"{r['preset']} {r['cell']} {r['policy']}: {r['ttft_p99_s']:.3f} s here but "
                                 f"{want:.3f} s in the headline file: re-run that file first")
    print("| preset | cell | warmserve P99 s: registered / activation 6.51 ms / tick 0.5 s | autoscale P99 s: "
          "registered, tick 1 / 0.5 s | autoscale best keep-alive, tick 1 / 0.5 s |\n|---|---|---|---|---|")
    key = {(r["preset"], r["cell"], r["policy"], r["activation_s"], r["tick_s"], bool(r["options"])): r for r in runs}
    for p in args.presets.split(","):
        for c in args.cells.split(","):
            w = [key[(p, c, "warmserve", a, t, False)]["ttft_p99_s"]
                 for a, t in ((None, None), (ACTIVATION_MEASURED_H200_S, None), (None, LIVE_TICK_S))]
            a = [key[(p, c, "autoscale", None, t, False)]["ttft_p99_s"] for t in (None, LIVE_TICK_S)]
            k = [key[(p, c, "autoscale", None, t, True)]["ttft_p99_s"] for t in (None, LIVE_TICK_S)
                 if (p, c, "autoscale", None, t, True) in key]
            print(f"| {p} | {c} | {w[0]:.3f} / {w[1]:.3f} / {w[2]:.3f} | {a[0]:.2f} / {a[1]:.2f} | "
                  + (f"{k[0]:.2f} / {k[1]:.2f} |" if k else "- |"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": seeds, "live_tick_s": LIVE_TICK_S, "measured_activation_s": ACTIVATION_MEASURED_H200_S,
                       "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
