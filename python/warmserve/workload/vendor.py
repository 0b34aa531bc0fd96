"""Rebuild the compact trace extracts vendored in ``warmserve/data`` from the full trace folder.

    python -m warmserve.workload.vendor /path/to/shared/traces

Azure 2023 CSVs are copied gzip-compressed (unchanged rows). From ServeGen the per-model 10-minute rates and the
6-hour length stats are copied as they are; the per-client windows keep only the largest clients of each model
(by requests over the whole span) with numbers rounded to 5 significant digits, and the length PMFs keep only
input/output tokens with probabilities of at least 1e-6. Standard library only, deterministic output.
"""

from __future__ import annotations

import collections
import csv
import gzip
import os
import shutil
import sys

#: clients kept per ServeGen model in the vendored extract (the rest are in the full folder)
TOP_CLIENTS = {"m-large": 24, "m-mid": 16, "m-small": 16, "deepseek-r1": 12, "mm-image": 8}
PMF_FIELDS = ("input_tokens", "output_tokens")
PMF_MIN_PROB = 1e-6


def _gz_copy(src: str, dst: str) -> None:
    with open(src, "rb") as f, gzip.GzipFile(dst, "wb", mtime=0) as g:
        shutil.copyfileobj(f, g)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    src = argv[0]
    out = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
    os.makedirs(out, exist_ok=True)
    for kind in ("code", "conv"):
        name = f"azure2023_AzureLLMInferenceTrace_{kind}.csv"
        _gz_copy(os.path.join(src, name), os.path.join(out, name + ".gz"))
    sg = os.path.join(src, "servegen")
    for name in ("servegen_model_rates_10min.csv", "servegen_length_stats_6h.csv"):
        shutil.copyfile(os.path.join(sg, name), os.path.join(out, name))
    with gzip.open(os.path.join(sg, "servegen_client_windows.csv.gz"), "rt", newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    vol = collections.Counter()
    for r in rows:
        vol[(r[1], r[2])] += float(r[4])
    keep = set()
    for model, n in TOP_CLIENTS.items():
        ranked = sorted(((v, int(c)) for (m, c), v in vol.items() if m == model), reverse=True)[:n]
        keep |= {(model, str(c)) for _, c in ranked}
    with gzip.GzipFile(os.path.join(out, "servegen_client_windows_top.csv.gz"), "wb", mtime=0) as g:
        lines = [",".join(header)]
        for r in rows:
            if (r[1], r[2]) in keep:
                r = r[:4] + [f"{float(r[4]):.5g}", f"{float(r[5]):.5g}", r[6], f"{float(r[7]):.5g}", f"{float(r[8]):.5g}"]
                lines.append(",".join(r))
        g.write(("\n".join(lines) + "\n").encode())
    with gzip.open(os.path.join(sg, "servegen_length_pmf.csv.gz"), "rt", newline="") as f:
        rows = list(csv.reader(f))
    with gzip.GzipFile(os.path.join(out, "servegen_length_pmf_io.csv.gz"), "wb", mtime=0) as g:
        lines = [",".join(rows[0])]
        lines += [",".join(r) for r in rows[1:] if r[2] in PMF_FIELDS and float(r[4]) >= PMF_MIN_PROB]
        g.write(("\n".join(lines) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
