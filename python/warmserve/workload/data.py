"""Where the vendored traces live (``warmserve/data``, shipped in the wheel)."""

from __future__ import annotations

import csv
import os

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
