"""The Azure 2023 trace read column-wise in blocks (found in review: the row-by-row reader held the whole file as one
string and six lists of Python objects per row, 8.5 s and 707 MB for 1 M rows, about 11 GB for the week-long
2024 trace).

Only files exactly in the published layout are read here: the header ``TIMESTAMP,ContextTokens,GeneratedTokens``
(after at most one byte-order mark), rows of three unquoted cells, the time as ``YYYY-MM-DD HH:MM:SS`` with an
optional 1-15 digit fraction, token counts of 1-18 ASCII digits, ``\\n`` or ``\\r\\n`` line ends, blank lines. Every
such row is read to the same values as the csv module and ``azure._stamp`` read it; anything else (a bad cell, a
quote, a leap second, another column order) raises ``NotColumnar`` and ``azure`` reads the file the row-by-row way,
which refuses a bad row naming its line.
"""

from __future__ import annotations

import gzip
from datetime import datetime, timedelta, timezone

import numpy as np

#: bytes read per block: peak memory is the arrays kept (33 bytes a row) plus a few times this
CHUNK_BYTES = 4 << 20
_HEADER = b"TIMESTAMP,ContextTokens,GeneratedTokens"
_BOM = b"\xef\xbb\xbf"
#: 10**k as exact floats: int / 10**k is then the correctly rounded decimal, as float("0." + digits) is
_P10 = np.array([float(10 ** k) for k in range(16)])
_I10 = np.array([10 ** k for k in range(19)], dtype=np.int64)
_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class NotColumnar(Exception):
    """The file holds something this reader does not read exactly as the row-by-row one does."""


class Columns:
    """One trace's rows in file order: ``t`` (Unix seconds as ``azure._when`` gives them), ``whole`` (whole seconds),
    ``frac15`` (the fraction in units of 1e-15 s: equal keys are equal times, as ``azure._stamp``'s were),
    ``flen`` (the fraction's digits, 0: no fraction), ``ctx``, ``gen``; ``blank_before``: for each blank line, the
    rows before it (a row's line number counts them); ``over``: see ``read_columns``."""

    def __init__(self, t, whole, frac15, flen, ctx, gen, blank_before):
        self.t, self.whole, self.frac15, self.flen = t, whole, frac15, flen
        self.ctx, self.gen, self.blank_before = ctx, gen, blank_before
        self.over: list = [None, None]

    def line(self, i):
        """The file line of row ``i`` (an int or an array of them): the header is line 1."""
        return 2 + i + np.searchsorted(self.blank_before, i, side="right")

    def cell(self, i: int) -> str:
        """Row ``i``'s TIMESTAMP cell as written (the layout read here has one spelling per value)."""
        d = _EPOCH + timedelta(seconds=int(self.whole[i]))
        s = f"{d.year:04d}-{d.month:02d}-{d.day:02d} {d.hour:02d}:{d.minute:02d}:{d.second:02d}"
        n = int(self.flen[i])
        return s + (f".{int(self.frac15[i]) // 10 ** (15 - n):0{n}d}" if n else "")


class _Index:
    """``seq[i]`` as ``get(i)``: what ``azure._warn_gaps`` indexes its lines and cells by."""

    def __init__(self, get):
        self.get = get

    def __getitem__(self, i):
        return self.get(i)


def lines_and_cells(c: Columns) -> tuple[_Index, _Index]:
    return _Index(lambda i: int(c.line(i))), _Index(c.cell)


def _digits(buf: np.ndarray, lo: np.ndarray, hi: np.ndarray, most: int) -> np.ndarray:
    """The ASCII digits in ``buf[lo:hi]`` of each row as int64, 1 to ``most`` of them, else NotColumnar."""
    n = hi - lo
    if len(n) == 0:
        return np.zeros(0, np.int64)
    if n.min() < 1 or n.max() > most:
        raise NotColumnar
    val = np.zeros(len(n), np.int64)
    for k in range(int(n.max())):  # from the last digit: k-th from the right weighs 10**k
        has = n > k
        d = buf[np.where(has, hi - 1 - k, 0)].astype(np.int64) - 48
        if np.any(has & ((d < 0) | (d > 9))):
            raise NotColumnar
        val += np.where(has, d, 0) * _I10[k]
    return val


def _fixed(buf: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    return _digits(buf, at, at + width, width)


def _block(buf: np.ndarray, blank_base: int):
    """Parse one block of whole lines (``buf`` ends with ``\\n``); returns its columns and its blank lines' row
    counts (offset by ``blank_base``, the rows before the block)."""
    ends = np.flatnonzero(buf == 10)
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    cr = (ends > starts) & (buf[ends - 1] == 13)
    if np.count_nonzero(buf == 13) != np.count_nonzero(cr):  # a lone \r ends a line for csv, not for this split
        raise NotColumnar
    ends = ends - cr
    blank = ends == starts
    commas = np.flatnonzero(buf == 44)
    per_line = np.bincount(np.searchsorted(ends, commas), minlength=len(ends))
    if np.any(per_line != np.where(blank, 0, 2)):
        raise NotColumnar
    blank_before = np.cumsum(~blank)[blank] + blank_base
    s, e = starts[~blank], ends[~blank]
    c0, c1 = commas[0::2], commas[1::2]
    ctx, gen = _digits(buf, c0 + 1, c1, 18), _digits(buf, c1 + 1, e, 18)
    tlen = c0 - s
    if len(s) and (tlen.min() < 19 or np.any(tlen == 20) or tlen.max() > 35):
        raise NotColumnar
    for off, ch in ((4, 45), (7, 45), (10, 32), (13, 58), (16, 58)):  # - - space : :
        if np.any(buf[s + off] != ch):
            raise NotColumnar
    dotted = tlen > 19
    if np.any(buf[s[dotted] + 19] != 46):
        raise NotColumnar
    y, mo, d = _fixed(buf, s, 4), _fixed(buf, s + 5, 2), _fixed(buf, s + 8, 2)
    h, mi, sec = _fixed(buf, s + 11, 2), _fixed(buf, s + 14, 2), _fixed(buf, s + 17, 2)
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    mo_ok = (mo >= 1) & (mo <= 12)
    dim = _DAYS[np.where(mo_ok, mo, 0)] + (leap & (mo == 2))
    # strptime refuses these (year 0, day 31 of a 30-day month) and takes second 60 its own way: the row reader says
    if not np.all((y >= 1) & mo_ok & (d >= 1) & (d <= dim) & (h <= 23) & (mi <= 59) & (sec <= 59)):
        raise NotColumnar
    flen = np.where(dotted, tlen - 20, 0)
    frac = np.zeros(len(s), np.int64)
    frac[dotted] = _digits(buf, s[dotted] + 20, c0[dotted], 15)
    # days from the civil date, proleptic Gregorian (H. Hinnant's days_from_civil): what datetime counts
    ya = y - (mo <= 2)
    era = ya // 400
    yoe = ya - era * 400
    doy = (153 * np.where(mo > 2, mo - 3, mo + 9) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    whole = days * 86400 + h * 3600 + mi * 60 + sec
    t = whole.astype(np.float64) + frac / _P10[flen]
    return (t, whole, frac * _I10[15 - flen], flen.astype(np.int8), ctx, gen), blank_before


def read_columns(path: str, max_tokens: int) -> Columns:
    """Read ``path`` (.csv or .csv.gz) in ``CHUNK_BYTES`` blocks. Token counts over ``max_tokens`` are kept clipped
    (int32) and said in ``over``: per column (ContextTokens, GeneratedTokens) None or (the first such row's line,
    its count, how many rows are over), for the caller to refuse."""
    opener = gzip.open if path.endswith(".gz") else open
    parts, blanks, rows, over = [], [], 0, [None, None]
    with opener(path, "rb") as f:
        head = f.readline()
        if head.startswith(_BOM):
            head = head[len(_BOM):]
        if head.rstrip(b"\n").removesuffix(b"\r") != _HEADER or not head.endswith(b"\n"):
            raise NotColumnar
        tail = b""
        while True:
            block = f.read(CHUNK_BYTES)
            data = tail + block if block else tail + (b"\n" if tail else b"")
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            if cut:
                cols, blank_before = _block(np.frombuffer(data, np.uint8, cut), rows)
                for k, v in enumerate(cols[4:]):
                    bad = np.flatnonzero(v > max_tokens)
                    if len(bad):
                        first, value, n = over[k] or (rows + int(bad[0]), int(v[bad[0]]), 0)
                        over[k] = (first, value, n + len(bad))
                # the counts go int32 here to keep 4 bytes a row: one over the limit is refused by ``over``
                parts.append((*cols[:4], *(np.minimum(v, max_tokens).astype(np.int32) for v in cols[4:])))
                blanks.append(blank_before)
                rows += len(cols[0])
            if not block:
                break
    if not rows:
        raise NotColumnar
    c = Columns(*(np.concatenate([p[k] for p in parts]) for k in range(6)), np.concatenate(blanks))
    c.over = [o and (int(c.line(o[0])), o[1], o[2]) for o in over]
    return c


def repeats(c: Columns):
    """Rows alike in every column, as ``azure._warn_repeats`` finds them: (first line of the earliest repeated row's
    key, that row's line, how many rows repeat an earlier one) or None. Only rows sharing a float time can be alike
    (equal keys give equal floats), so only those are sorted on the exact key."""
    order = np.argsort(c.t, kind="stable")
    eq = c.t[order[1:]] == c.t[order[:-1]]
    if not eq.any():
        return None
    idx = np.unique(np.concatenate([order[1:][eq], order[:-1][eq]]))
    keys = (c.whole[idx], c.frac15[idx], c.ctx[idx], c.gen[idx])
    o = np.lexsort((idx, *keys[::-1]))  # by the key, then file order
    new = np.ones(len(o), bool)
    new[1:] = np.any([k[o[1:]] != k[o[:-1]] for k in keys], axis=0)
    if new.all():
        return None
    first = idx[o][np.maximum.accumulate(np.where(new, np.arange(len(o)), 0))]
    rep = idx[o][~new]
    j = int(np.argmin(rep))
    return int(c.line(int(first[~new][j]))), int(c.line(int(rep[j]))), len(rep)
