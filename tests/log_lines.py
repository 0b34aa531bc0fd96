"""A logging handler that keeps the messages it is given, for tests that attach it to a logger directly (the access
logger does not propagate to pytest's caplog, and Ray tests log inside another process's pytest run). Importable
from every test directory: tests/conftest.py puts this directory on sys.path."""

from __future__ import annotations

import logging


class LogLines(logging.Handler):
    """Every message at ``level`` or above, formatted with its arguments, in order (``lines``)."""

    def __init__(self, level: int = logging.INFO):
        super().__init__(level)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())
