"""Re-run some policies of simulator JSON files with the arguments each file records, and merge their new entries
in (``merge_policies.merge``): after a change that moves only the policies built on ``Policy`` with warmserve's
defaults (a changed default of PolicyConfig), the baselines the change cannot move (`autoscale`, whose registry
entry fixes the option; `shared` and `dedicated`, static) keep their figures, and the slow searches of `shared`
are not run again. A ``--sweep-rate`` file has its swept policies replaced the same way. Each file is rewritten
only once its run finished; a file that records no arguments is refused (its command is not known).

    python bench/simulate/issue11/rerun_policies.py --jobs 2 bench/simulate/issue11/paper_conv.json ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from autoscale_best import positive_int  # this folder's scripts
from merge_policies import merge

from warmserve.sim.cli import add_arguments, write_results
from warmserve.sim.cli_output import sweep_table
from warmserve.policy.registry import POLICY_NAMES
from warmserve.sim.runner import band_policies

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench", "simulate"))
from table_of import render  # noqa: E402 (bench/simulate's script, on the path above)
#: Policies whose figures a change of warmserve's defaults leaves as they were (policy.registry).
KEEP = ("autoscale", "shared", "dedicated")
#: Recorded with the value the command filled in, though refused as flags where no search runs.
SEARCH_ONLY = ("search_iters", "slo_target")
#: Recorded arguments that are not command-line flags, or are given by this script.
NOT_FLAGS = ("policy",)


def command(args: dict, policies: list[str], out: str) -> list[str]:
    """The `warmserve simulate` command a file's recorded ``args`` (``sim.cli.run_args``) stand for, for the
    given policies, writing ``out``."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    defaults = vars(p.parse_args([]))
    cmd = ["warmserve", "simulate", "--quiet", "--json", out, "--policy", ",".join(policies)]
    for key, value in sorted(args.items()):
        # only what differs from the flag's default: some defaults are refused beside other flags (--search-iters
        # with --no-search), and a default a later tree changes should not be pinned by the re-run
        if key in NOT_FLAGS or value is None or value is False or (key in defaults and defaults[key] == value):
            continue
        if key in SEARCH_ONLY and (args.get("no_search") or args.get("sweep_rate")):
            continue  # recorded as the defaults it filled in; refused beside --no-search (--sweep-rate)
        if key == "cold_start_band" and not band_policies(policies):
            continue  # drawn for the cold-start policies alone, refused without one
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif isinstance(value, list):
            for v in value:
                cmd += [flag, str(v)]
        else:
            cmd += [flag, str(value)]
    return cmd


def _sweep_outputs(path: str, merged: dict) -> None:
    """The table (.txt, its first line kept) and plot (.png) beside a sweep's JSON, where they exist."""
    stem = os.path.splitext(path)[0]
    if os.path.exists(stem + ".txt"):
        with open(stem + ".txt") as f:
            first = f.readline()
        with open(stem + ".txt", "w") as f:
            f.write(first + sweep_table(merged["sweep"]) + "\n")
    if os.path.exists(stem + ".png"):
        from warmserve.sim.plot import plot_rate_sweep, rate_sweep_title

        a = merged["args"]
        plot_rate_sweep(merged["sweep"], stem + ".png",
                        rate_sweep_title(merged["preset"], a["seeds"], a.get("burst_cv"), a.get("policy_option"),
                                         ttft_slo_s=a.get("ttft_slo_s") or 0.0, slo_scale=a.get("slo_scale")))


def _table_beside(path: str, merged: dict) -> None:
    """The .txt beside a merged JSON, rendered again where one exists (found in review: four tables still showed the
    run before, where the README's separate table_of.py step had missed them)."""
    txt = os.path.splitext(path)[0] + ".txt"
    if not os.path.exists(txt):
        return
    text = render(merged)
    if text is not None:
        with open(txt, "w") as f:
            f.write(text)


def rerun(path: str, only: list[str] | None) -> str:
    with open(path) as f:
        base = json.load(f)
    if not isinstance(base, dict) or not isinstance(base.get("policies", base.get("sweep")), dict):
        raise SystemExit(f"{path}: not a `warmserve simulate --json` output (no policies)")
    if "args" not in base:
        raise SystemExit(f"{path}: records no arguments, so its command is not known; re-run it by hand")
    swept = base.get("sweep", {}).get("policies") if "sweep" in base else None
    have = list(swept if swept is not None else base["policies"])
    policies = only or [p for p in have if p not in KEEP]
    policies = [p for p in policies if p in have]
    if not policies:
        return f"{path}: nothing to re-run (its policies: {', '.join(have)})"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "later.json")
        cmd = command(base["args"], policies, out)
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)  # profiles are named from the root
        if done.returncode != 0:
            raise SystemExit(f"{path}: {' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
        with open(out) as f:
            later = json.load(f)
    if swept is not None:
        merged = dict(base)
        merged["sweep"] = {**base["sweep"], "policies": {**swept, **{p: later["sweep"]["policies"][p]
                                                                      for p in policies}}}
        merged["merged"] = {**base.get("merged", {}), **{p: "rerun_policies.py" for p in policies}}
        _sweep_outputs(path, merged)
    else:
        merged = merge(base, later, policies, "rerun_policies.py")
    write_results(path, merged)  # atomically, as `warmserve simulate --json` writes
    if swept is None:
        _table_beside(path, merged)
    return f"{path}: re-ran {', '.join(policies)} in {time.perf_counter() - t0:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="simulator JSON files that record their arguments")
    ap.add_argument("--policies", default=None,
                    help="comma-separated policies to re-run (default: every policy of the file but "
                         + ", ".join(KEEP) + ")")
    ap.add_argument("--jobs", type=positive_int, default=1, help="files re-run at once (one process each)")
    args = ap.parse_args()
    only = [p for p in args.policies.split(",") if p] if args.policies else None
    unknown = [p for p in only or [] if p not in POLICY_NAMES]
    if unknown or only == []:
        ap.error(f"--policies {args.policies!r}: " + (f"unknown {', '.join(unknown)}; " if unknown else "")
                 + f"choose from {', '.join(POLICY_NAMES)}")
    failed = 0

    def one(path: str) -> str:
        nonlocal failed
        try:
            return rerun(path, only)
        except (SystemExit, OSError, ValueError, KeyError) as e:  # one file's failure leaves the others to finish
            failed += 1
            return f"FAILED {path}: {e}" if not str(e).startswith(path) else f"FAILED {e}"

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for line in pool.map(one, args.files):
            print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
