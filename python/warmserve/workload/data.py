"""Where the vendored traces live (``warmserve/data``, shipped in the wheel)."""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import zlib

from warmserve.errors import InvalidArgumentError

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def data_path(name: str) -> str:
    return os.path.join(DATA_DIR, name)


def file_key(path: str) -> tuple:
    """``(path, st_mtime_ns, st_size, st_ino)``: what the loaders' caches are keyed on (found in review: keyed on the
    path only, a file edited in the same process was not read again). A file that cannot be stat'ed keys on its
    path alone, so the loader itself says why it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return (path, None, None, None)
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)


def check_header(path: str, reader: csv.DictReader, need: tuple[str, ...], what: str, written_by: str) -> None:
    """Raise InvalidArgumentError unless the CSV file's header has the columns ``need``; ``what`` names the file's
    kind, ``written_by`` where a good one comes from."""
    have = reader.fieldnames or []
    if have and have[0].startswith("\ufeff"):  # a UTF-8 byte-order mark read as text (Excel's "CSV UTF-8")
        have = reader.fieldnames = [have[0][1:], *have[1:]]
    missing = [c for c in need if c not in have]
    if missing:
        why = ("is empty (no header line)" if not have
               else f"has no column {', '.join(missing)} (header: {','.join(have)})")
        raise InvalidArgumentError(f"{what} {path} {why}: give a file with the columns {','.join(need)}, "
                                   f"{written_by}", path=path, missing=missing)


def open_text(path: str):
    """``path`` (.csv, or .gz) opened as CSV text. A byte-order mark is skipped (Excel's "CSV UTF-8"); a byte that is
    not UTF-8 is kept as a surrogate escape, which ``check_row`` refuses naming its line and column (found in
    review: a bare UnicodeDecodeError naming neither the file nor the line)."""
    opener = gzip.open if path.endswith(".gz") else open
    return opener(path, "rt", newline="", encoding="utf-8-sig", errors="surrogateescape")


@contextlib.contextmanager
def gz_errors(path: str, what: str, fix: str):
    """Reading ``path`` inside: a .gz file cut short or damaged is an InvalidArgumentError naming it (found in
    review: a bare EOFError, BadGzipFile or zlib.error naming no file)."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise InvalidArgumentError(f"{what} {path} cannot be read as a .gz file ({e}): a download cut short or a "
                                   f"damaged copy? {fix}", path=path) from None


def check_row(path: str, reader: csv.DictReader, row: dict, need: tuple[str, ...], what: str, fix: str) -> None:
    """Raise InvalidArgumentError, naming its line, unless ``row`` (``reader``'s last) has one cell per header
    column, at least up to those in ``need``. Found in review: a cell more than the header (a count written "1,000",
    a decimal comma) shifted the row's cells and dropped its last one, and a ServeGen window cut short before its
    pattern was read as a window without traffic, both silently. A cell holding a byte that is not UTF-8
    (``open_text`` keeps it as a surrogate escape) is refused too."""
    line = reader.line_num
    extra = row.get(None)
    if extra is not None:
        n = len(reader.fieldnames)
        raise InvalidArgumentError(f"{what} {path}, line {line}: {n + len(extra)} cells, the header has {n} (the "
                                   f"cells past it: {extra!r}; a comma inside a number?): {fix}", path=path,
                                   line=line)
    for col, v in row.items():
        if v is not None and not v.isascii():  # isascii is O(1) on CPython: only the rare non-ASCII cell is encoded
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidArgumentError(f"{what} {path}, line {line}, column {col}: {v!r} holds the byte "
                                           f"{ord(v[e.start]) - 0xDC00:#04x}, which is not UTF-8 text: {fix}",
                                           path=path, line=line, column=col) from None
    for col in need:
        if row.get(col) is None:
            raise InvalidArgumentError(f"{what} {path}, line {line}: no {col} cell (the row is shorter than the "
                                       f"header): {fix}", path=path, line=line, column=col)


def checked_rows(path: str, reader: csv.DictReader, need: tuple[str, ...], what: str, fix: str):
    """Yield the rows of ``reader`` (its header read) as lists in the header's order, each refused as ``check_row``
    refuses it; a row shorter than the header is padded with None, as DictReader pads it. DictReader builds a dict
    per row and ``check_row`` looks at each cell: 0.83 s of ServeGen's 96,501 client windows, paid by every process
    that samples them (a ``simulate`` or ``bench replay``). Here a row with one cell per column, all ASCII, passes
    on two C-level checks; only other rows take ``check_row``'s path."""
    names = reader.fieldnames
    n = len(names)
    raw = reader.reader
    for row in raw:
        if not row:  # DictReader skips blank lines
            continue
        reader.line_num = raw.line_num  # DictReader's own line_num, which callers and check_row name lines by
        if len(row) != n or not "".join(row).isascii():
            cells = dict(zip(names, row))
            if len(row) > n:
                cells[None] = row[n:]
            else:
                cells.update((k, None) for k in names[len(row):])
            check_row(path, reader, cells, need, what, fix)
            row = row + [None] * (n - len(row))
        yield row
