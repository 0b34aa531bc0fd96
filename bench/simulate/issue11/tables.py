"""Print the markdown tables of bench/simulate/ISSUE11_ROUNDS.md (the former "Where warmserve wins" section) from
the JSON files the commands there wrote (run from anywhere: python bench/simulate/issue11/tables.py)."""

from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = ("paper_conv", "paper_code", "artifact_conv", "artifact_code")


def load(name):
    p = os.path.join(HERE, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None


def f(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float) and v >= 100:
        return f"{v:.0f}"
    return f"{v:.{nd}f}"


def per_seed(s, key="ttft_p99_s", nd=2):
    return " / ".join(f(x[key], nd) for x in s.get("per_seed", {}).values()) or "-"


def policy_table(doc):
    print("| policy | TTFT p50 | p90 | p99 | p99 per seed 0/1/2 | SLO | starts (cold) | prewarm hits | GPU-s | "
          "max rps@SLO |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, s in doc["policies"].items():
        print(f"| {name} | {f(s['ttft_p50_s'])} | {f(s['ttft_p90_s'])} | {f(s['ttft_p99_s'])} | {per_seed(s)} | "
              f"{f(s['slo_attainment'])} | {s['instance_starts']:.0f} ({s['starts_cold']:.0f}) | "
              f"{f(s['prewarm_hit_rate'], 2)} | {s['gpu_seconds']:.0f} | {f(s.get('max_rate_under_slo_rps'), 2)} |")
    w = doc["workload"]
    print(f"\n{w['requests']} requests over {w['duration_s']:.0f} s at seed 0 "
          f"({w['requests'] / w['duration_s']:.1f} rps)\n")


def ratio_p99(doc, a="autoscale", b="warmserve"):
    if not doc or a not in doc["policies"] or b not in doc["policies"]:
        return None, None
    pa, pb = doc["policies"][a], doc["policies"][b]
    med = pa["ttft_p99_s"] / pb["ttft_p99_s"]
    seeds = [pa["per_seed"][k]["ttft_p99_s"] / pb["per_seed"][k]["ttft_p99_s"] for k in pb.get("per_seed", {})]
    return med, seeds


def fr(r):
    med, seeds = r
    if med is None:
        return "-"
    return f"**{med:.1f}x** ({' / '.join(f'{x:.1f}' for x in seeds)})"


def headline():
    print("| preset | load | P99 autoscale/warmserve, 14 s | at 35 s | route cap 32 (14 s) | "
          "max rate warmserve/shared | P99 warmserve/dedicated | GPU-s warmserve/dedicated |")
    print("|---|---|---|---|---|---|---|---|")
    for p in PRESETS:
        for var, label in (("", "trace"), ("_burst2", "CV 2"), ("_burst4", "CV 4")):
            main = load(p if not var else p + var)
            if main is None:
                continue
            cs = load(p + var + "_cs35")
            cap = load(p + var + "_cap32")
            r35 = (None, None)
            if cs:
                # 35 s changes only the cold-engine policy: autoscale at 35 s over warmserve of the same file
                r35 = ratio_p99(cs)
            mr = "-"
            pol = main["policies"]
            srch = load(p + var + "_search")
            sp = srch["policies"] if srch else {}
            if sp.get("shared", {}).get("max_rate_under_slo_rps"):
                mr = f"{sp['warmserve']['max_rate_under_slo_rps'] / sp['shared']['max_rate_under_slo_rps']:.2f}x " \
                     f"({sp['warmserve']['max_rate_under_slo_rps']:.1f} / {sp['shared']['max_rate_under_slo_rps']:.1f})"
            wd = gd = "-"
            if "dedicated" in pol:
                wd = fr(ratio_p99(main, "warmserve", "dedicated"))
                gd = f"{pol['warmserve']['gpu_seconds'] / pol['dedicated']['gpu_seconds']:.2f}x"
            print(f"| {p.replace('_', '-')} | {label} | {fr(ratio_p99(main))} | {fr(r35)} | "
                  f"{fr(ratio_p99(cap)) if cap else '-'} | {mr} | {wd} | {gd} |")
    print()


def max_rate_table():
    """Max rate under the SLO: P_search (warmserve as shipped, co-serving off; shared), P_search_coserve (warmserve
    with coserve_tpot_s=0.1) and P_search_floor{0,05,1} (warmserve with reclaim_floor_share 0 / 0.5 / 1): the
    mean offered rate over the seeds of the highest passing search point."""
    print("| preset | warmserve | shared | ratio | co-serving on | ratio | reclaim floor 0 / 0.5 / 1 |")
    print("|---|---|---|---|---|---|---|")
    for p in PRESETS:
        a, c = load(p + "_search"), load(p + "_search_coserve")
        if a is None:
            continue
        w = a["policies"]["warmserve"]["max_rate_under_slo_rps"]
        sh = a["policies"]["shared"]["max_rate_under_slo_rps"]
        n = c["policies"]["warmserve"]["max_rate_under_slo_rps"] if c else None
        fl = [load(f"{p}_search_floor{t}") for t in ("0", "05", "1")]
        fls = " / ".join(f"{d['policies']['warmserve']['max_rate_under_slo_rps']:.1f}" if d else "-" for d in fl)
        print(f"| {p.replace('_', '-')} | {w:.1f} | {sh:.1f} | **{w / sh:.2f}x** | {f(n, 1)} | "
              f"{'-' if n is None else f'{n / sh:.2f}x'} | {fls} |")
    print()


def floor_table():
    """warmserve at 2x (artifact-conv) and 4x (artifact-code) rate for each reclaim floor share (medians)."""
    print("| run | floor 0 (before) | 0.5 | 0.8 (default) | 1 |")
    print("|---|---|---|---|---|")
    for run, base in (("artifact-conv x2", "artifact_conv_x2"), ("artifact-code x4", "artifact_code_x4")):
        cells = []
        for t in ("_floor0", "_floor05", "_seeds" if base.endswith("x2") else "", "_floor1"):
            d = load(base + t)
            s = d["policies"]["warmserve"] if d else None
            cells.append(f"{s['ttft_p99_s']:.2f} s / {s['slo_attainment']:.3f}" if s else "-")
        print(f"| {run}: P99 / SLO | " + " | ".join(cells) + " |")
    print()


def option_table(names):
    """warmserve and the other policy of each option run (autoscale or dedicated), medians over the seeds."""
    print("| run | policy | p99 | p99 per seed 0/1/2 | SLO | starts (cold) | GPU-s |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        d = load(n)
        if d is None:
            continue
        for name, s in d["policies"].items():
            print(f"| {n} | {name} | {f(s['ttft_p99_s'])} | {per_seed(s)} | {f(s['slo_attainment'])} | "
                  f"{s['instance_starts']:.0f} ({s['starts_cold']:.0f}) | {s['gpu_seconds']:.0f} |")
    print()


def variant_table(doc):
    print("| policy | p50 | p99 | p99 per seed 0/1/2 | SLO | starts (cold) | hits | GPU-s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in sorted(doc["policies"].items(), key=lambda kv: kv[1]["ttft_p99_s"]):
        print(f"| {name} | {f(s['ttft_p50_s'])} | {f(s['ttft_p99_s'])} | {per_seed(s)} | {f(s['slo_attainment'])} | "
              f"{s['instance_starts']:.0f} ({s['starts_cold']:.0f}) | {f(s['prewarm_hit_rate'], 2)} | "
              f"{s['gpu_seconds']:.0f} |")
    print()


def sweep_table(doc):
    sw = doc["sweep"]
    first = next(iter(sw["policies"].values()))["points"]
    print("| policy | " + " | ".join(f"{p['offered_rate_rps']:.1f} rps" for p in first) + " | max swept rps@SLO |")
    print("|---|" + "---|" * (len(first) + 1))
    for name, pol in sw["policies"].items():
        print(f"| {name} | " + " | ".join(f"{p['ttft_p99_s']:.2f} s / {p['slo_attainment']:.3f}" for p in pol["points"])
              + f" | {pol['max_swept_rate_under_slo_rps']:.1f} |")
        band = pol.get("cold_start_band")
        if band:
            print(f"| {name}, cold start {band['cold_start_s'][1]:g} s | "
                  + " | ".join(f"{p['ttft_p99_s']:.2f} s / {p['slo_attainment']:.3f}" for p in band["high"]) + " | |")
    print()


def main():
    print("## max rate under the SLO\n")
    max_rate_table()
    print("## reclaim floor\n")
    floor_table()
    print("## headline\n")
    headline()
    print("## option runs\n")
    option_table(["paper_code_cs35", "paper_code_cs35_preempt60", "paper_code_cs35_nopreempt", "paper_code_idle0",
                  "artifact_code_idle0", "paper_conv_idle0", "artifact_conv_idle0"])
    for p in PRESETS:
        doc = load(p)
        if doc:
            print(f"## {p}\n")
            policy_table(doc)
        for var in ("_burst2", "_burst4"):
            d = load(p + var)
            if d:
                print(f"## {p}{var}\n")
                variant_table(d)
        for var in ("_sweep", "_burst4_sweep", "_cap32_sweep"):
            d = load(p + var)
            if d:
                print(f"## {p}{var}\n")
                sweep_table(d)


if __name__ == "__main__":
    main()
