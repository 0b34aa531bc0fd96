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
import io
import logging
import os
from datetime import datetime, timezone

import numpy as np

from warmserve.errors import InvalidArgumentError
from warmserve.workload import azure_columns
from warmserve.workload.request import Trace
from warmserve.workload.data import check_header, check_row, data_path, file_key, gz_errors, open_text

log = logging.getLogger("warmserve.workload")

KINDS = ("code", "conv")


def load_azure(kind: str = "conv", path: str | None = None) -> Trace:
    """Load one Azure 2023 trace as a one-model Trace named ``azure-<kind>``.

    ``path``: a CSV (or .csv.gz) in the published layout; default is the copy vendored with the package.
    """
    if kind not in KINDS:
        # typed (still a ValueError), with the fix, found in review
        raise InvalidArgumentError(f"Azure trace kind must be one of {KINDS}, got {kind!r}: pass kind='conv' or "
                                   "kind='code'", kind=repr(kind))
    if path is None:
        path = data_path(f"azure2023_AzureLLMInferenceTrace_{kind}.csv.gz")
    t = _load(file_key(os.path.abspath(path)), kind)
    return Trace(t.models, t.arrival_s.copy(), t.model.copy(), t.prompt_tokens.copy(), t.output_tokens.copy())


#: the bundled traces' source, as a workload's ``meta`` records it
SOURCE = "Azure LLM inference trace 2023 (Patel et al., Splitwise, ISCA 2024; CC-BY 4.0)"


def trace_source(path: str | None) -> str:
    """What a workload's ``meta`` records as its source: the bundled traces' citation, or a given file by its path,
    size and SHA-256, so that a result names the very bytes it replayed."""
    if path is None:
        return SOURCE
    return _source_of(file_key(os.path.abspath(path)))


@functools.lru_cache(maxsize=8)
def _source_of(key: tuple) -> str:
    # keyed as the loader's cache is (data.file_key): a max-rate search builds a workload per rate and seed
    import hashlib

    digest = hashlib.sha256()
    with open(key[0], "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{key[0]} ({os.path.getsize(key[0])} bytes, sha256 {digest.hexdigest()}; Azure 2023 layout)"


_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
#: the longest token length a trace holds (``request.Trace`` stores lengths as int32)
MAX_TOKENS = 2**31 - 1


def _stamp(cell: str) -> tuple[float, str]:
    """A TIMESTAMP cell as (whole Unix seconds, its fraction's digits), read as UTC (the module doc): exact, where
    the float the two make cannot tell times 100 ns apart."""
    base, _, frac = cell.partition(".")
    if frac and not frac.isdigit():  # float("0." + frac) took "-5" or "5+01:00" apart with a bare ValueError
        raise ValueError(cell)
    return datetime.strptime(base, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp(), frac


def _when(cell: str) -> float:
    """A TIMESTAMP cell as Unix seconds, read as UTC (the module doc)."""
    whole, frac = _stamp(cell)
    return whole + float("0." + (frac or "0"))


_CELLS = (("TIMESTAMP", _when, "a time as YYYY-MM-DD HH:MM:SS[.fraction]"),
          ("ContextTokens", int, "a token count (a whole number)"),
          ("GeneratedTokens", int, "a token count (a whole number)"))


#: the fixes the loader's errors give: in words that fit both ``path=`` and ``warmserve simulate --trace``
_FIX = "fix that row, or give a copy of the published AzureLLMInferenceTrace CSV"
_FILE_FIX = "give a whole copy of the published AzureLLMInferenceTrace CSV"


def _bad(path: str, line: int, msg: str, **fields) -> InvalidArgumentError:
    return InvalidArgumentError(f"Azure trace {path}, line {line}{msg}: {_FIX}", path=path, line=line, **fields)


#: a gap between consecutive arrivals is worth a WARNING when it is over ``GAP_FLOOR_S`` and over ``GAP_FACTOR`` times
#: the trace's 99th-percentile gap (the nearest gap at or below it, so one outlier does not raise the percentile it is
#: measured against). The published traces' largest gaps are 217 s (code) and 4 s (conv).
GAP_FLOOR_S = 3600.0
GAP_FACTOR = 1000.0


def _warn_repeats(path: str, stamps: list, ctx: list, gen: list, lines: list) -> None:
    """Say when rows are alike in every column (found in review: a trace appended to itself loaded at twice its rate
    without a word). A WARNING, not a refusal: at whole-second timestamps two requests of a fixed template are
    alike and real (the final review's case); the published files hold no repeated timestamp at all."""
    first: dict = {}
    pair, n = None, 0
    for key, line in zip(zip(stamps, ctx, gen), lines):
        at = first.setdefault(key, line)
        if at != line:
            n += 1
            pair = pair or (at, line)
    if pair:
        _say_repeats(path, pair[0], pair[1], n, len(lines))


def _say_repeats(path: str, first: int, second: int, n: int, rows: int) -> None:
    log.warning("Azure trace %s: lines %d and %d are alike in every column (%d such repeated rows of %d): each is "
                "replayed; a file appended to itself doubles the trace's rate", path, first, second, n, rows)


def _warn_gaps(path: str, t: np.ndarray, lines: list, raw: list) -> None:
    """Say when a gap between consecutive arrivals is far beyond the rest (``GAP_FLOOR_S``, ``GAP_FACTOR``; found in
    review: one timestamp typed a year late made the trace cover a year, and paper_workload stacked ~150,000 copies
    of it until MemoryError, which recipes._circular_stretch now refuses). A WARNING: a real quiet spell (a night,
    an outage) is such a gap too."""
    if len(t) < 3:
        return
    order = np.argsort(t, kind="stable")
    gaps = np.diff(t[order])
    p99 = float(np.percentile(gaps, 99, method="lower"))
    far = np.flatnonzero((gaps > GAP_FLOOR_S) & (gaps > GAP_FACTOR * p99))
    if len(far):
        i = int(far[np.argmax(gaps[far])])
        a, b = int(order[i]), int(order[i + 1])
        lo, hi = sorted((lines[a], lines[b]))
        first, second = (raw[a], raw[b]) if lines[a] < lines[b] else (raw[b], raw[a])
        log.warning("Azure trace %s, lines %d and %d: the arrivals %s and %s are %.3g s apart with nothing between "
                    "them, while 99%% of the trace's gaps are at most %.3g s: a mistyped timestamp, or a quiet spell "
                    "replayed as one", path, lo, hi, first, second, gaps[i], p99)


@functools.lru_cache(maxsize=8)
def _load(key: tuple | str, kind: str) -> Trace:
    # key: data.file_key (found in review: keyed on the path only, an edited file was not read again); a plain path
    # is taken too (tests call the uncached _load.__wrapped__ with one)
    path = key if isinstance(key, str) else key[0]
    if not os.path.exists(path):
        raise FileNotFoundError(f"Azure trace {path} not found: pass path= to a copy of "
                                f"AzureLLMInferenceTrace_{kind}.csv")
    try:
        with gz_errors(path, "Azure trace", _FILE_FIX):
            c = azure_columns.read_columns(path, MAX_TOKENS)
    except azure_columns.NotColumnar:  # a bad row, or a layout only the csv module reads: row by row, as before
        return _load_rows(path, kind)
    for col, over in zip(("ContextTokens", "GeneratedTokens"), c.over):
        if over:
            raise _bad(path, over[0], f", column {col}: {over[1]} is not a token count in [0, {MAX_TOKENS}] "
                       f"({over[2]} such rows)", column=col)
    rep = azure_columns.repeats(c)
    if rep:
        _say_repeats(path, rep[0], rep[1], rep[2], len(c.t))
    lines, cells = azure_columns.lines_and_cells(c)
    _warn_gaps(path, c.t, lines, cells)
    t = c.t
    t -= t.min()
    return Trace([f"azure-{kind}"], t, np.zeros(len(t), np.int32), c.ctx, c.gen)


def _load_rows(path: str, kind: str) -> Trace:
    """The file row by row through the csv module: every layout it reads, and each bad row refused by line."""
    with gz_errors(path, "Azure trace", _FILE_FIX), open_text(path) as f:  # a byte-order mark is no part of TIMESTAMP
        text = f.read()
    # found in review: an empty file, a short row, a missing column or a cell that is no number raised bare
    # ValueError/TypeError/KeyError naming no line, and negative token counts were kept; each is refused, by line
    reader = csv.DictReader(io.StringIO(text))
    check_header(path, reader, _COLUMNS, "Azure trace", "as published")
    ts, ctx, gen, lines, stamps, raw = [], [], [], [], [], []
    for row in reader:
        check_row(path, reader, row, (), "Azure trace", _FIX)
        try:
            whole, frac = _stamp(row["TIMESTAMP"])
            ts.append(whole + float("0." + (frac or "0")))
            stamps.append((whole, frac.rstrip("0")))
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
        raw.append(row["TIMESTAMP"])
    if not ts:
        raise InvalidArgumentError(f"Azure trace {path} has a header but no request: give a copy of the "
                                   f"published AzureLLMInferenceTrace_{kind}.csv", path=path)
    for col, v in (("ContextTokens", ctx), ("GeneratedTokens", gen)):
        bad = [i for i, x in enumerate(v) if not 0 <= x <= MAX_TOKENS]
        if bad:
            raise _bad(path, lines[bad[0]], f", column {col}: {v[bad[0]]} is not a token count in [0, {MAX_TOKENS}] "
                       f"({len(bad)} such rows)", column=col)
    _warn_repeats(path, stamps, ctx, gen, lines)
    t = np.asarray(ts)
    _warn_gaps(path, t, lines, raw)
    t -= t.min()
    return Trace([f"azure-{kind}"], t, np.zeros(len(t), np.int32), ctx, gen)
