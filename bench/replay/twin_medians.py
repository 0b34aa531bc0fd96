r"""The simulated twin against repeated live runs of one workload: the median of their TTFT P50 / P99 and their
spread, beside the twin (which is the same for every run of a workload: the twin is seeded, live is not).

    python bench/replay/twin_medians.py bench/replay/twins_host_cores.json \
        bench/replay/twins_host_cores_quiet_profile.json
    python bench/replay/twin_medians.py bench/replay/twins_host_cores.json --runs 'results_fresh_ts015_run[3-8].json'

Input: files written by ``retwin.py --json``. Runs are grouped by their replay arguments (all but where results
were written), so only runs of the same workload, cluster and profile are put together. ``--runs`` keeps the
runs whose file name matches one of the patterns (fnmatch), e.g. the runs on a quiet machine only."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import statistics
import sys

#: replay arguments that say where results went, not what ran
_OUTPUT_ARGS = {"json", "plot", "log_dir", "quiet", "reuse_live"}


def _workload_key(path: str) -> str:
    with open(path) as f:
        args = json.load(f).get("args") or {}
    # an option added after a run was recorded is absent from its args: absent and None are the same
    return json.dumps({k: v for k, v in args.items() if k not in _OUTPUT_ARGS and v is not None}, sort_keys=True)


def groups(twins: list[dict], patterns: list[str]) -> list[dict]:
    """Per workload and policy: the live runs' median, min and max of TTFT P50 / P99, the twin's, twin / median."""
    by_key: dict[str, list[dict]] = {}
    for row in twins:
        name = os.path.basename(row["file"])
        if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        by_key.setdefault(_workload_key(row["file"]), []).append(row)
    out = []
    for rows in by_key.values():
        g = {"runs": [os.path.basename(r["file"]) for r in rows], "policies": {}}
        for pol in rows[0]["policies"]:
            d = {}
            for q in ("p50", "p99"):
                live = [r["policies"][pol][f"live_{q}_s"] for r in rows]
                sims = {round(r["policies"][pol][f"sim_{q}_s"], 9) for r in rows}
                if len(sims) != 1:
                    raise ValueError(f"{g['runs']}: twins differ for {pol} {q} ({sorted(sims)}): not one workload")
                sim = sims.pop()
                med = statistics.median(live)
                d[q] = {"live_median_s": med, "live_min_s": min(live), "live_max_s": max(live), "sim_s": sim,
                        "sim_over_live_median": sim / med}
            g["policies"][pol] = d
        out.append(g)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("twins", nargs="+", help="JSON files written by retwin.py --json")
    p.add_argument("--runs", action="append", default=[], help="only live files whose name matches (fnmatch)")
    p.add_argument("--json", default=None, help="write the groups here")
    a = p.parse_args()
    result = {}
    for path in a.twins:
        with open(path) as f:
            gs = groups(json.load(f), a.runs)
        result[path] = gs
        for g in gs:
            print(f"{os.path.basename(path)}: {len(g['runs'])} live run(s) of one workload ({', '.join(g['runs'])})")
            for pol, d in g["policies"].items():
                cells = [f"{q.upper()} live median {v['live_median_s']:.3f} s ({v['live_min_s']:.3f}-"
                         f"{v['live_max_s']:.3f}), twin {v['sim_s']:.3f} s = {v['sim_over_live_median']:.2f}x"
                         for q, v in d.items()]
                print(f"  {pol}: " + "; ".join(cells))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
