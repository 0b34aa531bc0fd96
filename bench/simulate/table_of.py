"""Print the table `warmserve simulate` printed for the run that wrote a results JSON: its stdout (the preset line,
one row per policy, the ratios, the wall time), rendered from the file by the simulator's own printers.

    python bench/simulate/table_of.py bench/simulate/issue11/paper_code.json
    python bench/simulate/table_of.py --write bench/simulate/issue11/*.json   # each P.txt beside its P.json

Where a re-run wrote the JSON alone (the commands in README.md's "How to run" take --json and no redirection), the
.txt beside it still showed the run before: --write renders it again (the per-policy progress lines of stderr that
an older .txt held are not in the JSON and are not written). A sweep's JSON (--sweep-rate) is skipped: its table is
P_sweep.txt, written by its own command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys

from warmserve.sim.cli import print_ratios
from warmserve.sim.cli_output import summary_table


def render(doc: dict) -> str | None:
    """The stdout of the run that wrote ``doc``; None for a document that is not one run's summary per policy."""
    if not isinstance(doc, dict):  # a script's own list of rows (issue11/static_bound.json): found crashing --write
        return None
    pol = doc.get("policies")
    if not isinstance(pol, dict) or not all(isinstance(s, dict) and "ttft_p99_s" in s for s in pol.values()):
        return None
    c, w = doc["cluster"], doc["workload"]
    # a single seed's summary lists none; a file older than the recorded arguments (issue11/artifact_conv_x2.json,
    # paper_*_seed0_m7.json) has no "args" either: its seed is unknown, so it is skipped, not guessed (before: a
    # KeyError that stopped --write on the glob of its docstring half-way, leaving the later files' tables stale)
    seeds = next(iter(pol.values())).get("seeds") or [(doc.get("args") or {}).get("seed")]
    if seeds == [None]:
        return None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print(f"{doc['preset']}: {len(doc['models'])} models on {c['servers']}x{c['gpus_per_server']} {c['gpu']}, "
              f"{w['requests']} requests over {w['duration_s']:.0f} s ({w['requests'] / w['duration_s']:.2f} rps), "
              f"seeds {seeds}" + (" (medians)" if len(seeds) > 1 else ""))
        print(summary_table(pol))
        print_ratios(doc.get("ratios", {}))
        if "wall_s" in doc:  # a merge of two runs' files (issue11/merge_policies.py) has none
            print(f"wall {doc['wall_s']:.1f} s")
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="results JSON files of `warmserve simulate --json`")
    ap.add_argument("--write", action="store_true", help="write each table to the .txt beside its JSON")
    args = ap.parse_args()
    for path in args.files:
        with open(path) as f:
            text = render(json.load(f))
        if text is None:
            print(f"{path}: not one run's table per policy (a sweep, a script's own file, or one without its "
                  "recorded seed): skipped", file=sys.stderr)
        elif args.write:
            with open(path[:-len(".json")] + ".txt", "w") as f:
                f.write(text)
        else:
            print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
