"""Print PAPER_EXPERIMENT.md's markdown tables from the JSON files the benchmark commands wrote.

    python bench/simulate/tables.py            # run from the repository root
"""

from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    p = os.path.join(HERE, name)
    return json.load(open(p)) if os.path.exists(p) else None


def _f(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, (int,)) or (isinstance(v, float) and v >= 999):
        return f"{v:.0f}" if isinstance(v, float) else str(v)
    return f"{v:.{nd}f}"


def paper_table(main, slo2):
    print("| policy | TTFT mean | p50 | p90 | p99 | p99 per seed | TPOT p50 | SLO (10x prefill) | thr rps | "
          "prewarm hits | GPU-s | max rps@SLO (10x) | max rps@SLO (2 s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, s in main["policies"].items():
        s2 = (slo2 or {}).get("policies", {}).get(name, {})
        per = " / ".join(_f(x["ttft_p99_s"], 2) for x in s.get("per_seed", {}).values()) or "-"
        print(f"| {name} | {_f(s['ttft_mean_s'])} | {_f(s['ttft_p50_s'])} | {_f(s['ttft_p90_s'])} | "
              f"{_f(s['ttft_p99_s'])} | {per} | {_f(s['tpot_p50_s'], 4)} | {_f(s['slo_attainment'])} | "
              f"{_f(s['throughput_rps'], 2)} | {_f(s['prewarm_hit_rate'], 2)} | {s['gpu_seconds']:.0f} | "
              f"{_f(s.get('max_rate_under_slo_rps'), 2)} | {_f(s2.get('max_rate_under_slo_rps'), 2)} |")
    w = main["workload"]
    print(f"\n{w['requests']} requests over {w['duration_s']:.0f} s; ratios: {main.get('ratios')}; "
          f"slo2: {(slo2 or {}).get('ratios')}\n")


def burst_table(d):
    print("| policy | TTFT mean | p50 | p90 | p99 | p99 per seed | SLO (10x prefill) | prewarm hits | GPU-s |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = sorted(d["policies"].items(), key=lambda kv: kv[1]["ttft_p99_s"])
    for name, s in rows:
        per = " / ".join(_f(x["ttft_p99_s"], 1) for x in s.get("per_seed", {}).values()) or "-"
        print(f"| {name} | {_f(s['ttft_mean_s'])} | {_f(s['ttft_p50_s'])} | {_f(s['ttft_p90_s'])} | "
              f"{_f(s['ttft_p99_s'])} | {per} | {_f(s['slo_attainment'])} | {_f(s['prewarm_hit_rate'], 2)} | "
              f"{s['gpu_seconds']:.0f} |")
    print(f"\nratios: {d.get('ratios')}\n")


def scale_table():
    print("| cluster | simulated | requests (measured + warm-up) | wall total | policy | simulator | "
          "TTFT p50 / p99 | SLO | starts | prewarm hits |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("scale_64x32.json", "scale_1024x256.json"):
        d = _load(name)
        if d is None:
            continue
        s = d["summary"]
        print(f"| {d['gpus']} GPUs x {d['models']} models | {d['simulated_s']:.0f} s (+{d['warmup_s']:.0f} s) | "
              f"{d['requests']:,} + {d['warmup_requests']:,} | {d['wall_total_s']:.1f} s | "
              f"{d['wall_policy_s']:.1f} s | "
              f"{d['wall_simulator_s']:.1f} s | {s['ttft_p50_s']:.3f} / {s['ttft_p99_s']:.3f} s | "
              f"{s['slo_attainment']:.3f} | {s['instance_starts']:,} | {s['prewarm_hit_rate']:.2f} |")


def main():
    for kind in ("conv", "code"):
        d = _load(f"paper_{kind}.json")
        if d:
            print(f"### {kind}")
            paper_table(d, _load(f"paper_{kind}_slo2s.json"))
    d = _load("paper_conv_burst4.json")
    if d:
        print("### conv, burst CV 4")
        burst_table(d)
    print("### scale")
    scale_table()


if __name__ == "__main__":
    main()
