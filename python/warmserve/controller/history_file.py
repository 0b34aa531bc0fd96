"""The per-model load history a cluster starts with (``--history``, ``ControllerConfig.history_path``): read from a
CSV or JSON file and checked, so that a bad file stops the start with its path, row and fix instead of a policy
tick failing later."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from array import array

from warmserve.errors import InvalidArgumentError

log = logging.getLogger("warmserve.controller")


def read_history(path: str) -> dict:
    """Per-model load history: CSV with columns model, window_start_s, avg, peak (one row per window), or JSON
    {model: {"window_start_s": [...], "avg": [...], "peak": [...]}}. Starts are Unix times (seconds); avg and
    peak are the window's time-weighted mean and peak in-flight requests. Returns model -> (starts, avgs, peaks)."""
    import numpy as np

    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"  # found in review: a folder "did not"
        raise InvalidArgumentError(f"history file {path!r} {what} (give a CSV model,window_start_s,avg,peak or "
                                   "its JSON form)", path=path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b":  # found in review: a gzip file failed as a bare UnicodeDecodeError naming no file
        raise InvalidArgumentError(f"history file {path!r} is gzip-compressed: decompress it (gunzip); the history "
                                   "is a CSV model,window_start_s,avg,peak or its JSON form", path=path)
    if path.lower().endswith(".json"):
        shape = ('{model: {"window_start_s": [...], "avg": [...], "peak": [...]}}, lists of numbers of one length '
                 'per model')
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f, object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidArgumentError(f"history {path} is not valid JSON ({e}); it holds {shape}") from None
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"history {path}: {e}") from None
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"history {path} holds JSON {type(data).__name__}; it must be {shape}")
        out = {}
        for model, d in data.items():
            # found in review: a missing key or a list where the object should be was a bare KeyError/AttributeError
            try:
                # by key, not truth: a model with no windows yet ([]) read as one with no starts at all (found in
                # review: refused as "arrays of different lengths")
                starts = d["window_start_s"] if "window_start_s" in d else d["start_s"]
                cols = [np.asarray(c, float) for c in (starts, d["avg"], d["peak"])]
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                raise InvalidArgumentError(
                    f"history {path}: model {model!r} is not {shape} ({type(e).__name__}: {e})") from None
            if any(c.ndim != 1 for c in cols) or not len(cols[0]) == len(cols[1]) == len(cols[2]):
                # the shapes said (found in review: not which list was off, nor by how much)
                sizes = ", ".join(f"{k} {list(c.shape)}" for k, c in zip(("window_start_s", "avg", "peak"), cols))
                raise InvalidArgumentError(f"history {path}: model {model!r} has arrays of different lengths or "
                                           f"shapes ({sizes}); it must be {shape}: give one number per window in "
                                           "each", path=path, model=model)
            out[model] = tuple(cols)
        if not out:
            raise InvalidArgumentError(f"history {path} names no model: it must be {shape}; leave the history out "
                                       "to start without one")
    else:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which read as part of the first column's
        # name ("model" not found, found in review); header names are stripped, as "model, avg" is written too
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames:
                    reader.fieldnames = [n.strip() for n in reader.fieldnames]
                    has = set(reader.fieldnames) | ({"window_start_s"} if "start_s" in reader.fieldnames else set())
                    lacking = [c for c in ("model", "window_start_s", "avg", "peak") if c not in has]
                    if lacking:  # found in review: named after the first row, by the alias start_s it lacked too
                        raise InvalidArgumentError(
                            f"history {path}: its header lacks {', '.join(lacking)} (it has "
                            f"{', '.join(reader.fieldnames)}): the header must be model,window_start_s,avg,peak",
                            path=path, lacking=lacking)
                rows = _csv_columns(path, reader)
        except UnicodeDecodeError as e:
            raise InvalidArgumentError(f"history {path} is not UTF-8 text ({e}): it must be a CSV model,"
                                       "window_start_s,avg,peak or its JSON form") from None
        if not rows:  # found in review: an empty or header-only file (or JSON named .JSON) ran with no history
            raise InvalidArgumentError(f"history {path} has no rows: it must be a CSV with the header "
                                       "model,window_start_s,avg,peak and one row per model and window, or "
                                       "its JSON form (a .json file); leave the history out to start without one")
        out = {}
        for m, cols in rows.items():
            starts, avg, peak = (np.frombuffer(c, float) for c in cols)
            twice = len(starts) - len(np.unique(starts))
            if twice:  # the JSON form refuses them (_unique_keys); a CSV's are merged here, for every reader
                log.warning("history %s: model %r has %d window(s) given more than once (one start, several rows): "
                            "each is read as the mean of its averages and the max of its peaks", path, m, twice)
                starts, avg, peak = (np.asarray(c, float) for c in zip(*sorted(_one_row_a_start(zip(
                    starts.tolist(), avg.tolist(), peak.tolist())))))
            order = np.argsort(starts, kind="stable")
            out[m] = (starts[order], avg[order], peak[order])
    return {model: _checked_history(path, model, *cols, time.time()) for model, cols in out.items()}


def _csv_columns(path: str, reader: csv.DictReader) -> dict[str, tuple[array, array, array]]:
    """model -> (starts, avgs, peaks) of the CSV rows after ``reader``'s header, in file order, as packed doubles.
    Read as plain rows into arrays, not as a dict and a tuple a row: found in the uptime review, a year of 300 s
    windows of 8 models (841k rows, 34 MB) took 2.6-3.6 s and 206 MB at its peak to read that way (now 1.2-1.8 s, 93
    MB), the start waiting on it. Cells as ``csv.DictReader`` gives them: blank lines skipped (not counted in the
    row number an error names), a short row's missing cells None, a column named twice its last."""
    at = {name: k for k, name in enumerate(reader.fieldnames or ())}
    k_model, k_avg, k_peak = at.get("model"), at.get("avg"), at.get("peak")
    k_ws, k_s = at.get("window_start_s"), at.get("start_s")
    rows: dict[str, tuple[array, array, array]] = {}
    lines = reader.reader
    i = -1
    for r in lines:
        if not r:
            continue
        i += 1
        n = len(r)
        try:
            if k_model is None or k_model >= n:  # >= n: a row cut before a last model column (was model None)
                raise KeyError("model")
            start = float((r[k_ws] if k_ws is not None and k_ws < n else None)
                          or (r[k_s] if k_s is not None and k_s < n else None))
            avg = float(r[k_avg] if k_avg < n else None)
            peak = float(r[k_peak] if k_peak < n else None)
            cols = rows.get(r[k_model])
            if cols is None:
                cols = rows[r[k_model]] = (array("d"), array("d"), array("d"))
            cols[0].append(start)
            cols[1].append(avg)
            cols[2].append(peak)
        except (KeyError, ValueError, TypeError) as e:  # TypeError: a short row's missing cells
            # Found in review: a file cut short (a crash, a full disk) was told of as a bad cell, with
            # a 'start_s' no one wrote, or 16 KB of a NUL-filled cell.
            cut = " The file ends in this row: it was cut short; delete its last line." \
                if next((x for x in lines if x), None) is None else ""
            raise InvalidArgumentError(
                f"history {path} row {i + 2}: need model, window_start_s, avg, peak (an empty or missing "
                f"cell: write nan where a load is unknown) ({str(e)[:80]!s}).{cut}", path=path,
                row=i + 2) from None
    return rows


def _one_row_a_start(rows) -> list:
    """(start, avg, peak) rows, those of one start made one as the policy reads them (``History.load``): the mean of
    their known averages, the max of their known peaks. Found in review: the policy read the merge, and the record
    file (controller/history_record.py) wrote back the row that sorted last, alone."""
    by_start: dict[float, list] = {}
    for start, avg, peak in rows:
        by_start.setdefault(start, []).append((avg, peak))
    out = []
    for start, pairs in by_start.items():
        avgs = [a for a, _ in pairs if not math.isnan(a)]
        peaks = [p for _, p in pairs if not math.isnan(p)]
        out.append((start, sum(avgs) / len(avgs) if avgs else math.nan, max(peaks) if peaks else math.nan))
    return out


def _unique_keys(pairs: list) -> dict:
    """A JSON object, refused where a key comes twice: json keeps the last one only (found in review: two
    controllers' files joined by hand kept one model's history and dropped the other's without a word)."""
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise InvalidArgumentError(f"the JSON names {k!r} twice, and only one could be kept: merge the two "
                                       "entries' window_start_s, avg and peak lists into one")
        seen[k] = v
    return seen


#: How far back a history file is read: the policy holds every window from its earliest on, per model.
HISTORY_MAX_DAYS = 366
#: Unix time of 2001-09-09: a history start before it is not a Unix time (seconds from a trace's start, say).
UNIX_2001_S = 1e9
#: How far after now a history row may start unremarked, seconds: two machines' clocks differ by that much.
AHEAD_SLACK_S = 60.0


def _checked_history(path: str, model: str, starts, avg, peak, now_unix_s: float) -> tuple:
    """The model's rows, less those older than HISTORY_MAX_DAYS (dropped with a warning: the forecasts look a few
    days back), once its loads are in-flight requests (>= 0, NaN where unknown) and its starts Unix seconds up to
    a day ahead. Found in review: an inf load crashed every policy tick of its time slot, day after day; starts in
    milliseconds sized the history for 190,000 years (89 GiB a model); starts counted from 0 put the policy's
    clock in 1970."""
    import numpy as np

    from warmserve.policy.history import MAX_HISTORY_LOAD, impossible_loads

    bad = impossible_loads(avg, peak)
    if bad.any():
        k = int(np.argmax(bad))
        raise InvalidArgumentError(
            f"history {path}: model {model!r} has {int(bad.sum())} window(s) with an infinite, negative or "
            f"implausible (> {MAX_HISTORY_LOAD:g}) load, e.g. avg {avg[k]}, peak {peak[k]} at window_start_s "
            f"{starts[k]:.0f}: avg and peak are in-flight requests (>= 0; NaN where unknown)")
    if not len(starts):
        return starts, avg, peak
    first, last = float(np.min(starts)), float(np.max(starts))
    if not (np.isfinite(first) and np.isfinite(last)) or last > now_unix_s + 1e9 or last < UNIX_2001_S:
        raise InvalidArgumentError(
            f"history {path}: model {model!r} has windows from window_start_s {first:.0f} to {last:.0f}, where "
            f"now is {now_unix_s:.0f}: starts must be Unix times in seconds (milliseconds, or seconds counted from "
            "the trace's start, are not)", path=path, model=model)
    ahead = starts > now_unix_s + AHEAD_SLACK_S
    if last > now_unix_s + 86400:  # found in review: said "none ahead of now", though a day ahead passes
        raise InvalidArgumentError(
            f"history {path}: model {model!r} has {int(ahead.sum())} window(s) starting more than a day ahead of now "
            f"(the newest {(last - now_unix_s) / 3600:.1f} h ahead): the clock of the machine that wrote them ran "
            "ahead, or they are local times written as Unix seconds. Fix: delete those rows", path=path,
            model=model, ahead_s=last - now_unix_s)
    if ahead.any():  # found in review: a file in Tokyo's local time put the daily burst 9 h off, unsaid
        log.warning("history %s: model %r: %d window(s) start after now (the newest %.1f h ahead), read as given: a "
                    "clock ahead, or local times written as Unix seconds (a time-zone mix-up)?", path, model,
                    int(ahead.sum()), (last - now_unix_s) / 3600)
    keep = starts >= now_unix_s - HISTORY_MAX_DAYS * 86400
    if not keep.all():
        log.warning("history %s: model %r: %d window(s) older than %d days left out (the earliest from %.0f)",
                    path, model, int((~keep).sum()), HISTORY_MAX_DAYS, first)
    return starts[keep], avg[keep], peak[keep]
