"""Ablations seed by seed: each variant's P99 TTFT over warmserve's on the same seed (the same replayed workload),
which the medians over seeds hide behind the seed-to-seed spread. Reads the six-seed files.

    python bench/simulate/issue11/paired_ablations.py bench/simulate/issue11/*_ablations_seeds6.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="simulator JSON files with warmserve and its variants, per seed")
    args = ap.parse_args()
    print("| file | variant | P99 / warmserve's, median over seeds | seeds where worse | range |")
    print("|---|---|---|---|---|")
    for path in args.files:
        with open(path) as f:
            policies = json.load(f)["policies"]
        base = policies["warmserve"]["per_seed"]
        for name, v in policies.items():
            if name == "warmserve":
                continue
            r = [v["per_seed"][s]["ttft_p99_s"] / base[s]["ttft_p99_s"] for s in base]
            print(f"| {os.path.basename(path)} | {name} | {statistics.median(r):.2f}x | {sum(x > 1 for x in r)} of "
                  f"{len(r)} | {min(r):.2f}-{max(r):.2f}x |")


if __name__ == "__main__":
    main()
