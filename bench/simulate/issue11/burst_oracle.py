"""How many of one model's requests miss the TTFT SLO if its instances join at given times: the reaction a policy
needs to a burst, read off the simulator's own request stream with no policy in it.

Each instance serves prefills one at a time, first come first served; a request's first token comes when its
prefill ends (``CostModel.prefill_s`` of its prompt). Two ways of sending requests to instances:
- ``pooled``: one queue, the next request to the instance free first (late binding);
- ``pinned``: each request goes, when it arrives, to the instance whose queue clears first (what a router that
  sends at once does: requests stay where they were sent when an instance joins).
Decode steps between prefills are left out, in the policy's favour: a policy whose instances join at those
times and serve each instance's requests in order misses at least about this many (the pinned choice is greedy,
so for it this is an estimate, not a bound).

    python bench/simulate/issue11/burst_oracle.py --preset paper-code --model llama2-70b-a --rate-scale 0.62 \\
        --joins 0,0 --joins 0,47,50 --joins 0,46,49 --joins 0,45,47 --window 30,70

``--joins 0,47,50``: one instance from the start, a second from t = 47 s and a third from 50 s (seconds after the
replayed span begins). ``--window``: count only requests arriving in [a, b) s.
"""

from __future__ import annotations

import argparse
import heapq
import json

from warmserve.sim.presets import PRESETS
from warmserve.sim.simulator import Simulator


def requests_of(preset_name: str, model: str, rate_scale: float,
                seed: int) -> tuple[list[tuple[float, float]], float, int]:
    """(arrival s after the replayed span begins, prefill s) of ``model``'s requests, its TTFT SLO (s), and the
    number of requests of every model in the span."""
    preset = PRESETS[preset_name]()
    sim = Simulator(preset.build(rate_scale, seed), preset.models, "warmserve", config=preset.config)
    mi = sim.names.index(model)
    cost = sim.mcost[mi]
    reqs = [(sim.arrival[i] - sim.clock0, sim.cost.prefill_s(cost, sim.prompt[i]))
            for i in range(sim.n_warm, len(sim.arrival)) if sim.req_model[i] == mi]
    slo = sim.cfg.ttft_slo_s or sim.cfg.slo_scale * sim.infos[mi].prefill_s
    return reqs, slo, len(sim.arrival) - sim.n_warm


def misses(reqs: list[tuple[float, float]], joins: list[float], slo_s: float, pooled: bool,
           window: tuple[float, float] = (float("-inf"), float("inf"))) -> int:
    """Requests in ``window`` whose first token comes later than ``slo_s`` after they arrive, with instance k
    serving from ``joins[k]`` on. ``reqs`` in arrival order."""
    joins = sorted(joins)
    free = list(joins)  # when each instance is next free; a sorted list is a heap
    n = 0
    for t, p in reqs:
        if pooled:
            done = max(heapq.heappop(free), t) + p
            heapq.heappush(free, done)
        else:
            k = min((k for k in range(len(free)) if joins[k] <= t), key=lambda k: max(free[k], t), default=None)
            if k is None:  # no instance yet: the one whose queue clears first once it joins
                k = min(range(len(free)), key=lambda k: free[k])
            done = max(free[k], t) + p
            free[k] = done
        n += window[0] <= t < window[1] and done - t > slo_s
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper-code", choices=sorted(PRESETS))
    p.add_argument("--model", default="llama2-70b-a")
    p.add_argument("--rate-scale", type=float, default=0.62)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--joins", action="append", required=True, help="comma-separated join times, s (one per instance)")
    p.add_argument("--window", default=None, help="a,b: count requests arriving in [a, b) s only")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    window = tuple(float(x) for x in a.window.split(",")) if a.window else (float("-inf"), float("inf"))
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        reqs, slo, n_all = requests_of(a.preset, a.model, a.rate_scale, seed)
        cells = []
        for spec in a.joins:
            joins = [float(x) for x in spec.split(",")]
            pooled, pinned = misses(reqs, joins, slo, True, window), misses(reqs, joins, slo, False, window)
            cells.append(f"joins {spec}: {pooled} pooled / {pinned} pinned")
            rows.append({"seed": seed, "joins": joins, "pooled": pooled, "pinned": pinned, "slo_s": slo,
                         "requests_all_models": n_all, "model_requests": len(reqs)})
        print(f"{a.preset} x{a.rate_scale} seed {seed}: {a.model} {len(reqs)} requests (all models {n_all}, 1% = "
              f"{n_all / 100:.0f}), SLO {slo:.2f} s; misses " + "; ".join(cells))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"preset": a.preset, "model": a.model, "rate_scale": a.rate_scale, "window": a.window,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
