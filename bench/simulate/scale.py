"""How fast the simulator runs big clusters: wall time for one simulated span, split into policy and simulator.

    python bench/simulate/scale.py --gpus 64 --models 32 --duration-s 3600 --json bench/simulate/scale_64x32.json
    python bench/simulate/scale.py --gpus 1024 --models 256 --duration-s 600 --start-hour 18.5 \\
        --json bench/simulate/scale_1024x256.json

(The 256-model workload reuses m-mid's clients shifted by days, and one shift carries a data gap of day 9 into
19:00-23:00 of the last day, which the recipe refuses: hence 18:30 there.)

Workload: the ServeGen recipe (largest clients of m-large/m-mid/m-small as distinct models, reused with day
shifts when more models are asked for than vendored clients), total rate 1 request/s per GPU, Llama-2
7B/13B/70B sizes in the paper's mix. The policy's share is measured by timing its calls (route, tick,
on_request_*) with perf_counter; the rest is the simulator.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from warmserve.sim.presets import scale_preset
from warmserve.sim.simulator import Simulator


def _timed(obj, name, acc):
    f = getattr(obj, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            acc[0] += time.perf_counter() - t

    setattr(obj, name, wrapper)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--models", type=int, default=32)
    ap.add_argument("--duration-s", type=float, default=3600.0)
    ap.add_argument("--rate-per-gpu", type=float, default=1.0, help="total requests/s per GPU")
    ap.add_argument("--policy", default="warmserve")
    ap.add_argument("--start-hour", type=float, default=20.0, help="replay start on ServeGen's last day, hours")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    p = scale_preset(args.gpus, args.models, duration_s=args.duration_s, total_rate_rps=args.rate_per_gpu * args.gpus,
                     start_hour=args.start_hour)
    w = p.build(1.0, 0)
    t_build = time.perf_counter() - t0
    t1 = time.perf_counter()
    sim = Simulator(w, p.models, args.policy, config=p.config)
    t_init = time.perf_counter() - t1
    acc = [0.0]
    for name in ("route", "tick", "on_request_start", "on_request_done"):
        _timed(sim.policy, name, acc)
    t2 = time.perf_counter()
    r = sim.run()
    t_run = time.perf_counter() - t2
    s = r.summary
    out = {
        "gpus": args.gpus, "models": args.models, "policy": args.policy, "simulated_s": w.duration_s,
        "warmup_s": w.warmup_s, "requests": s["requests"], "warmup_requests": sim.n_warm,
        "wall_build_workload_s": t_build, "wall_init_s": t_init, "wall_run_s": t_run,
        "wall_policy_s": acc[0], "wall_simulator_s": t_run - acc[0],
        "wall_total_s": time.perf_counter() - t0,
        "summary": {k: s[k] for k in ("ttft_p50_s", "ttft_p99_s", "slo_attainment", "throughput_rps",
                                      "prewarm_hit_rate", "instance_starts", "dropped", "gpu_utilization")},
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_implementation()} "
                   f"{platform.python_version()}",
    }
    print(f"{args.gpus} GPUs x {args.models} models, {w.duration_s:.0f} s simulated (+{w.warmup_s:.0f} s warm-up), "
          f"{s['requests']} requests (+{sim.n_warm} warm-up)")
    print(f"wall: total {out['wall_total_s']:.1f} s = workload {t_build:.1f} + init {t_init:.1f} + run {t_run:.1f} "
          f"(policy {acc[0]:.1f}, simulator {t_run - acc[0]:.1f})")
    print(f"TTFT p50 {s['ttft_p50_s']:.3f} s, p99 {s['ttft_p99_s']:.3f} s, SLO {s['slo_attainment']:.3f}, "
          f"starts {s['instance_starts']}, prewarm hits {s['prewarm_hit_rate']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
