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

from warmserve.errors import InvalidArgumentError
from warmserve.workload.request import Trace
from warmserve.workload.data import check_header, data_path

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


_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
#: the longest token length a trace holds (``request.Trace`` stores lengths as int32)
MAX_TOKENS = 2**31 - 1


def _when(cell: str) -> float:
    """A TIMESTAMP cell as Unix seconds, read as UTC (the module doc)."""
    base, _, frac = cell.partition(".")
    if frac and not frac.isdigit():  # float("0." + frac) took "-5" or "5+01:00" apart with a bare ValueError
        raise ValueError(cell)
    wall = datetime.strptime(base, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return wall.timestamp() + float("0." + (frac or "0"))


_CELLS = (("TIMESTAMP", _when, "a time as YYYY-MM-DD HH:MM:SS[.fraction]"),
          ("ContextTokens", int, "a token count (a whole number)"),
          ("GeneratedTokens", int, "a token count (a whole number)"))


def _bad(path: str, line: int, msg: str, **fields) -> InvalidArgumentError:
    return InvalidArgumentError(f"Azure trace {path}, line {line}{msg}: fix that row, or pass path= to a copy of "
                                f"the published AzureLLMInferenceTrace CSV", path=path, line=line, **fields)


@functools.lru_cache(maxsize=8)
def _load(path: str, kind: str) -> Trace:
    if not os.path.exists(path):
        raise FileNotFoundError(f"Azure trace {path} not found: pass path= to a copy of "
                                f"AzureLLMInferenceTrace_{kind}.csv")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        text = f.read()
    # found in review: an empty file, a short row, a missing column or a cell that is no number raised bare
    # ValueError/TypeError/KeyError naming no line, and negative token counts were kept; each is refused, by line
    reader = csv.DictReader(io.StringIO(text))
    check_header(path, reader, _COLUMNS, "Azure trace", "as published")
    ts, ctx, gen, lines = [], [], [], []
    for row in reader:
        try:
            ts.append(_when(row["TIMESTAMP"]))
            ctx.append(int(row["ContextTokens"]))
            gen.append(int(row["GeneratedTokens"]))
        except (TypeError, ValueError):
            for col, parse, want in _CELLS:
                v = row[col]
                if v is None:
                    raise _bad(path, reader.line_num, f": no {col} cell (the row is shorter than the header)",
                               column=col) from None
                try:
                    parse(v)
                except ValueError:
                    raise _bad(path, reader.line_num, f", column {col}: {v!r} is not {want}", column=col,
                               value=v) from None
            raise
        lines.append(reader.line_num)
    if not ts:
        raise InvalidArgumentError(f"Azure trace {path} has a header but no request: pass path= to a copy of the "
                                   f"published AzureLLMInferenceTrace_{kind}.csv", path=path)
    for col, v in (("ContextTokens", ctx), ("GeneratedTokens", gen)):
        bad = [i for i, x in enumerate(v) if not 0 <= x <= MAX_TOKENS]
        if bad:
            raise _bad(path, lines[bad[0]], f", column {col}: {v[bad[0]]} is not a token count in [0, {MAX_TOKENS}] "
                       f"({len(bad)} such rows)", column=col)
    t = np.asarray(ts)
    t -= t.min()
    return Trace([f"azure-{kind}"], t, np.zeros(len(t), np.int32), ctx, gen)
