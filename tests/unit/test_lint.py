"""The project's Python (python/, tests/, bench/) passes ruff with pyproject.toml's settings: pyflakes' checks
(an unused import, a name used before it is defined or never defined, a redefinition) and lines of at most 120
columns. An undefined name in a branch no test reaches is a NameError in front of a user; this finds it without
running it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ruff_finds_nothing_in_the_projects_python():
    pytest.importorskip("ruff", reason="ruff comes with the test extra: pip install '.[test]'")
    # --no-cache: a run leaves nothing in the source tree.
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                        "python", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"ruff check (fix these, or say why with a noqa):\n{r.stdout[-8000:]}{r.stderr[-2000:]}"
