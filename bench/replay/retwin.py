"""Run the simulated twin again for earlier live replays (``warmserve bench replay --reuse-live``, the same
arguments as each live run), after a change to the simulator or the policy, and compare it with the live figures.

    python bench/replay/retwin.py bench/replay/results_churn_coserve_ts015*.json bench/replay/results_fresh_ts0*.json \
        --json bench/replay/twins.json

Per file and policy: live TTFT P50 / P99, the twin stored in the file (from when it ran), the twin now, and sim /
live for the twin now. Files written by ``--reuse-live`` runs, or without live TTFTs, are skipped."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

from warmserve.bench.replay_setup import WORKLOAD_ARGS

#: replay arguments a twin must repeat: those the --reuse-live check compares (one list, so that a new workload
#: argument reaches the twin too), the policies, and the twin's own (its cost profile and scaling)
_FLAGS = ("policy", *WORKLOAD_ARGS, "profile", "sim_compute_scale", "sim_size", "sim_host_cores")


def twin(path: str, out_dir: str, extra: list[str] = ()) -> dict | None:
    with open(path) as f:
        live = json.load(f)
    a = live.get("args") or {}
    if a.get("reuse_live") or "ttft_s" not in live:
        return None
    cmd = [sys.executable, "-m", "warmserve", "bench", "replay", "--quiet", "--reuse-live", path,
           "--json", os.path.join(out_dir, os.path.basename(path))]
    for k in _FLAGS:
        if a.get(k) is not None:
            cmd += ["--" + k.replace("_", "-"), str(a[k])]
    for opt in a.get("policy_option") or ():  # repeatable: one flag each (found: a run with options was refused)
        cmd += ["--policy-option", opt]
    cmd += list(extra)  # later options win: these override the live run's
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{path}: the twin failed:\n{r.stderr[-2000:]}")
    with open(cmd[cmd.index("--json") + 1]) as f:
        now = json.load(f)
    rows = {}
    for p, v in now["validation"].items():
        old = live.get("validation", {}).get(p, {})
        rows[p] = {"live_p50_s": v["live_ttft_p50_s"], "live_p99_s": v["live_ttft_p99_s"],
                   "stored_sim_p50_s": old.get("sim_ttft_p50_s"), "stored_sim_p99_s": old.get("sim_ttft_p99_s"),
                   "sim_p50_s": v["sim_ttft_p50_s"], "sim_p99_s": v["sim_ttft_p99_s"],
                   "sim_over_live_p50": v["sim_over_live_p50"], "sim_over_live_p99": v["sim_over_live_p99"]}
    return {"file": path, "twin_args": list(extra), "policies": rows,
            "stored_sim_ratio": live.get("ratios", {}).get("sim_p99_ttft_autoscale_over_warmserve"),
            "sim_ratio": now["ratios"].get("sim_p99_ttft_autoscale_over_warmserve")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="JSON files of live replays (warmserve bench replay --json)")
    p.add_argument("--json", default=None, help="write the comparison here")
    p.add_argument("--twin-args", default="",
                   help="more `warmserve bench replay` options for every twin, overriding the live run's (e.g. "
                        "'--sim-host-cores 0' or '--profile other.json')")
    a = p.parse_args()
    out = []
    with tempfile.TemporaryDirectory() as d:
        for path in a.files:
            got = twin(path, d, shlex.split(a.twin_args))
            if got is None:
                print(f"{path}: skipped (a twin-only run, or no live TTFTs)")
                continue
            out.append(got)
            for pol, r in got["policies"].items():
                stored = ("-" if r["stored_sim_p99_s"] is None
                          else f"{r['stored_sim_p50_s']:.3f} / {r['stored_sim_p99_s']:.3f}")
                print(f"{os.path.basename(path)} {pol}: live {r['live_p50_s']:.3f} / {r['live_p99_s']:.3f} s, "
                      f"twin stored {stored}, twin now {r['sim_p50_s']:.3f} / {r['sim_p99_s']:.3f} s "
                      f"({r['sim_over_live_p50']:.2f}x / {r['sim_over_live_p99']:.2f}x)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
