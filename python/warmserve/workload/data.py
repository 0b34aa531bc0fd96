"""Where the vendored traces live (``warmserve/data``, shipped in the wheel)."""

from __future__ import annotations

import os

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def data_path(name: str) -> str:
    return os.path.join(DATA_DIR, name)
