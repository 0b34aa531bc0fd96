"""Where the vendored traces live (``warmserve/data``, shipped in the wheel)."""

from __future__ import annotations

import csv
import os

from warmserve.errors import InvalidArgumentError

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def data_path(name: str) -> str:
    return os.path.join(DATA_DIR, name)


def check_header(path: str, reader: csv.DictReader, need: tuple[str, ...], what: str, written_by: str) -> None:
    """Raise InvalidArgumentError unless the CSV file's header has the columns ``need``; ``what`` names the file's
    kind, ``written_by`` where a good one comes from."""
    have = reader.fieldnames or []
    missing = [c for c in need if c not in have]
    if missing:
        why = ("is empty (no header line)" if not have
               else f"has no column {', '.join(missing)} (header: {','.join(have)})")
        raise InvalidArgumentError(f"{what} {path} {why}: give a file with the columns {','.join(need)}, "
                                   f"{written_by}", path=path, missing=missing)
