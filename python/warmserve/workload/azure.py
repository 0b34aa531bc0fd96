"""Azure LLM inference traces 2023 (Patel et al., "Splitwise", ISCA 2024; CC-BY 4.0): code and conversation.

Each file is one service over about an hour: TIMESTAMP, ContextTokens, GeneratedTokens. Times are returned in
seconds from the first request.

TIMESTAMP is a wall-clock string with no zone (``2023-11-16 18:15:46.6805900``), and neither the dataset's doc
("Invocation time") nor SOURCES.md names one. It is read as UTC: only time differences are used, and UTC is the
one reading that does not depend on the machine (read in the local zone, before, a daylight-saving switch inside
the hour under the machine's TZ moved every later request by an hour). On a machine in UTC the times are the same
floats as before, so runs recorded there replay unchanged.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import os
from datetime import datetime, timezone

import numpy as np

from warmserve.workload.request import Trace
from warmserve.workload.data import data_path

KINDS = ("code", "conv")


def load_azure(kind: str = "conv", path: str | None = None) -> Trace:
    """Load one Azure 2023 trace as a one-model Trace named ``azure-<kind>``.

    ``path``: a CSV (or .csv.gz) in the published layout; default is the copy vendored with the package.
    """
    if kind not in KINDS:
        raise ValueError(f"Azure trace kind must be one of {KINDS}, got {kind!r}")
    if path is None:
        path = data_path(f"azure2023_AzureLLMInferenceTrace_{kind}.csv.gz")
    t = _load(os.path.abspath(path), kind)
    return Trace(t.models, t.arrival_s.copy(), t.model.copy(), t.prompt_tokens.copy(), t.output_tokens.copy())


@functools.lru_cache(maxsize=8)
def _load(path: str, kind: str) -> Trace:
    if not os.path.exists(path):
        raise FileNotFoundError(f"Azure trace {path} not found: pass path= to a copy of "
                                f"AzureLLMInferenceTrace_{kind}.csv")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        text = f.read()
    ts, ctx, gen = [], [], []
    for row in csv.DictReader(io.StringIO(text)):
        base, _, frac = row["TIMESTAMP"].partition(".")
        wall = datetime.strptime(base, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        ts.append(wall.timestamp() + float("0." + (frac or "0")))
        ctx.append(int(row["ContextTokens"]))
        gen.append(int(row["GeneratedTokens"]))
    t = np.asarray(ts)
    t -= t.min()
    return Trace([f"azure-{kind}"], t, np.zeros(len(t), np.int32), ctx, gen)
