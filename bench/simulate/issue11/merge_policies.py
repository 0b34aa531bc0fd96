"""Replace some policies' entries of a simulator JSON by those of a later run of the same workload, and recompute
the file's ratios: after a change to warmserve alone, its slow searches are run again for warmserve only
(``warmserve simulate ... --policy warmserve``) while `shared`'s searched figures, which that change cannot move,
are kept. Refuses runs that differ in anything but their policies: preset, models, cluster, workload, seeds, and
every recorded argument (``"args"``: cost profile, cold start, policy options, SLO, ...); a file that records no
arguments is merged only with ``--assume-same-options``.
The output records which entries came from which file (``merged``).

    python bench/simulate/issue11/merge_policies.py --base P_search_targets.json --take new.json --policy warmserve \
        --json P_search_targets.json [--assume-same-options]
"""

from __future__ import annotations

import argparse
import json

from warmserve.sim.cli import print_ratios, ratios_of
from warmserve.workload.recipes import offered_rate_rps


#: Recorded arguments (``sim.cli.run_args``) two merged runs may differ in: which policies ran.
MAY_DIFFER = ("policy",)


#: Workload meta fields recorded since some runs were written, each derived from fields both runs have: a run
#: without one is compared as if it had recorded it (by the recipes' own rule).
DERIVED_META = {"offered_rate_rps": offered_rate_rps}


#: Recorded since some runs were written, from the same draws: compared only where both runs have them.
RECORDED_SINCE_META = ("realised_rate_rps",)
#: Options recorded as None ("not given") since 2026-12-01, which earlier runs recorded as these defaults (options
#: the paper presets ignored then): the same run either way.
UNSET_WAS = {"history_days": 2, "start_hour": 20.0, "cold_start_band": "14,35"}


def _with_derived(workload):
    if not isinstance(workload, dict) or not isinstance(workload.get("meta"), dict):
        return workload
    meta = dict(workload["meta"])
    for k, f in DERIVED_META.items():
        if k not in meta and ("total_rate_rps" in meta or "expected_rate_rps" in meta):
            meta[k] = f(meta)
    return {**workload, "meta": meta}


def _comparable(a: dict, b: dict) -> tuple[dict, dict]:
    """Two workload records as they can be compared: fields one of them was written before dropped from both. A
    run of several seeds records each seed's request count (``requests_per_seed``) and their median as
    ``requests`` since 2026-12-01; before, ``requests`` was the first seed's count, which the list still shows."""
    a, b = dict(a), dict(b)
    ma, mb = dict(a.get("meta") or {}), dict(b.get("meta") or {})
    for k in RECORDED_SINCE_META:
        if (k in ma) != (k in mb):
            ma.pop(k, None), mb.pop(k, None)
    a["meta"], b["meta"] = ma, mb
    if ("requests_per_seed" in a) != ("requests_per_seed" in b):
        new, old = (a, b) if "requests_per_seed" in a else (b, a)
        if new["requests_per_seed"].get(str(new["meta"].get("seed"))) == old.get("requests"):
            for d in (a, b):
                d.pop("requests_per_seed", None), d.pop("requests", None)
    return a, b


def _same_option(a, b, key: str) -> bool:
    return a == b or (key in UNSET_WAS and {a, b} == {None, UNSET_WAS[key]})


def merge(base: dict, later: dict, policies: list[str], later_name: str, assume_same_options: bool = False) -> dict:
    for key in ("preset", "models", "cluster", "workload"):
        a, b = base.get(key), later.get(key)
        if key == "workload" and isinstance(a, dict) and isinstance(b, dict):
            a, b = _comparable(_with_derived(a), _with_derived(b))
        if a != b:
            raise SystemExit(f"the runs differ in {key!r}: {a!r} against {b!r}")
    if "args" in base and "args" in later:
        a, b = ({k: v for k, v in d["args"].items() if k not in MAY_DIFFER} for d in (base, later))
        differ = sorted(k for k in set(a) | set(b) if not _same_option(a.get(k), b.get(k), k))
        if differ:
            raise SystemExit("the runs differ in their options: "
                             + ", ".join(f"{k} {a.get(k)!r} against {b.get(k)!r}" for k in differ))
    elif not assume_same_options:
        # Found in review: a run with another cost profile (e.g. a cheaper KV mapping) has the same preset,
        # cluster and workload, and merged silently. Outputs written before "args" cannot show their options.
        raise SystemExit("a run records no arguments (written before sim.cli.run_args): only with "
                         "--assume-same-options, where the caller knows both ran the same command but --policy")
    seeds = {p: v.get("seeds") for p, v in base["policies"].items()}
    for p in policies:
        if p not in later["policies"]:
            raise SystemExit(f"{later_name} has no policy {p!r} (it has {sorted(later['policies'])})")
        if seeds.get(p, later["policies"][p].get("seeds")) != later["policies"][p].get("seeds"):
            raise SystemExit(f"{p}: seeds {seeds.get(p)} in the base, {later['policies'][p].get('seeds')} later")
    out = dict(base)
    out["policies"] = {**base["policies"], **{p: later["policies"][p] for p in policies}}
    out["merged"] = {**base.get("merged", {}), **{p: later_name for p in policies}}
    any_seeds = next(iter(later["policies"].values())).get("seeds") or [0]
    out["ratios"] = ratios_of(out["policies"], any_seeds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the earlier run's JSON")
    ap.add_argument("--take", required=True, help="the later run's JSON, of the same workload")
    ap.add_argument("--policy", required=True, help="comma-separated policies whose entries the later run gives")
    ap.add_argument("--json", required=True, help="write the merged JSON here (may be --base)")
    ap.add_argument("--assume-same-options", action="store_true",
                    help="merge even where a file records no arguments (written before they were recorded): the "
                         "caller vouches that both ran the same command but --policy")
    args = ap.parse_args()
    with open(args.base) as f:
        base = json.load(f)
    with open(args.take) as f:
        later = json.load(f)
    out = merge(base, later, [p for p in args.policy.split(",") if p], args.take, args.assume_same_options)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print_ratios(out["ratios"])


if __name__ == "__main__":
    main()
