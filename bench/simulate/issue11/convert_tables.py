"""Print the tables of OVERSUBSCRIBED.md's "In-place conversion of a co-served host" from the JSON files of this
folder: warmserve before (``paper_{conv,code}_m12_x{R}.json`` or ``..._x{R}_before_convert.json``, the policy of
commit 1b4bb55) and with in-place conversion (``..._x{R}_convert.json``), and the max-rate searches
(``paper_{conv,code}_m12_search[_convert].json``).

    python bench/simulate/issue11/convert_tables.py
"""

from __future__ import annotations

from oversubscribed_tables import _cell, _load

SCALES = (("0.25", "025"), ("0.35", "035"), ("0.5", "05"), ("0.75", "075"))


def main() -> None:
    print("| preset, rate scale | warmserve before (commit 1b4bb55) | "
          "warmserve now (conversion, replicas, route-time prefill trigger) |")
    print("|---|---|---|")
    for kind in ("conv", "code"):
        for scale, tag in SCALES:
            before = _load(f"paper_{kind}_m12_x{tag}") or _load(f"paper_{kind}_m12_x{tag}_before_convert")
            after = _load(f"paper_{kind}_m12_x{tag}_convert")
            if before is None or after is None:
                continue
            b, a = before["policies"]["warmserve"], after["policies"]["warmserve"]
            print(f"| paper-{kind} x{scale} ({a['offered_rate_rps']:.1f} rps) | {_cell(b)} | {_cell(a)} |")
    print()
    print("| preset | max rate under the SLO, rps: warmserve before / now / shared | ratio to shared |")
    print("|---|---|---|")
    for kind in ("conv", "code"):
        before, after = _load(f"paper_{kind}_m12_search"), _load(f"paper_{kind}_m12_search_convert")
        if before is None or after is None:
            continue
        wb = before["policies"]["warmserve"]["max_rate_under_slo_rps"]
        wa = after["policies"]["warmserve"]["max_rate_under_slo_rps"]
        sh = after["policies"]["shared"]["max_rate_under_slo_rps"]
        print(f"| paper-{kind} | {wb:.2f} / **{wa:.2f}** / {sh:.2f} | {wb / sh:.2f}x -> **{wa / sh:.2f}x** |")


if __name__ == "__main__":
    main()
