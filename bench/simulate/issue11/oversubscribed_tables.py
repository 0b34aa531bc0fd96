"""Print the tables of bench/simulate/OVERSUBSCRIBED.md's "Over-subscribed clusters: more models than GPUs" from the
JSON files of this folder (``paper_{conv,code}_m12_*``, ``paper_{conv,code}_seed0_m7``).

    python bench/simulate/issue11/oversubscribed_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def _load(name: str) -> dict | None:
    p = HERE / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _cell(r: dict) -> str:
    seeds = r.get("per_seed") or {}
    per = " / ".join(f"{s['slo_attainment']:.3f}" for s in seeds.values())
    return f"{r['slo_attainment']:.3f} ({per}), P99 {r['ttft_p99_s']:.2f} s, {r['instance_starts']:.0f} starts"


def main() -> None:
    print("| preset, rate scale | policy | SLO attainment median (seeds 0/1/2), P99 TTFT median, starts (median) |")
    print("|---|---|---|")
    for kind in ("conv", "code"):
        for scale, tag in (("0.25", "025"), ("0.5", "05")):
            d = _load(f"paper_{kind}_m12_x{tag}")
            if d is None:
                continue
            rows = list(d["policies"].items())
            off = _load(f"paper_{kind}_m12_x{tag}_knobs_off")
            if off is not None:
                rows.insert(1, ("warmserve, co-serving off (= before)", off["policies"]["warmserve"]))
            for name, r in rows:
                print(f"| paper-{kind} x{scale} | {name} | {_cell(r)} |")
    print()
    print("| knob (warmserve) | conv x0.25 | conv x0.5 | code x0.25 | code x0.5 | max rps conv | max rps code |")
    print("|---|---|---|---|---|---|---|")
    for label, suffix in (("default (memory rule: 3 per host, TPOT 0.1 s)", ""), ("coserve_max_models=2", "_max2"),
                          ("coserve_tpot_s=0.05", "_tpot005"), ("coserve_tpot_s=0.2", "_tpot02"),
                          ("coserve_tpot_s=0 (off)", "_off")):
        cells = []
        for kind in ("conv", "code"):
            for tag in ("025", "05"):
                d = _load(f"paper_{kind}_m12_x{tag}" + (f"_knobs{suffix}" if suffix else ""))
                r = d["policies"]["warmserve"] if d else None
                cells.append(f"{r['slo_attainment']:.3f} / {r['ttft_p99_s']:.2f} s" if r else "-")
        for kind in ("conv", "code"):
            d = _load(f"paper_{kind}_m12_search" + suffix)
            r = d["policies"]["warmserve"] if d else None
            cells.append(f"{r['max_rate_under_slo_rps']:.2f}" if r else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    for kind in ("conv", "code"):
        d = _load(f"paper_{kind}_m12_search")
        if d is None:
            continue
        rates = {p: r["max_rate_under_slo_rps"] for p, r in d["policies"].items()}
        w, s = rates.get("warmserve", 0.0), rates.get("shared", 0.0)
        print(f"paper-{kind}, 12 models: max rate under the SLO warmserve {w:.2f} rps, shared {s:.2f} rps, "
              f"ratio {w / s if s else float('nan'):.2f}x")
    for kind in ("conv", "code"):
        d = _load(f"paper_{kind}_seed0_m7")
        if d is not None:
            print(f"paper-{kind}, 7 models, seed 0: warmserve {_cell(d['policies']['warmserve'])}, "
                  f"GPU-s {d['policies']['warmserve']['gpu_seconds']:.0f}")


if __name__ == "__main__":
    main()
