"""bench/simulate/table_of.py --write over a glob of issue11's JSON, as its docstring shows: a file older than the
recorded arguments (no "args", one seed: its seed unknown) and a script's own list of rows are skipped, each said on
stderr, and the files after them are still written (found in review: a KeyError on artifact_conv_x2.json, then an
AttributeError on static_bound.json, stopped the run there, leaving every later file's table as it was)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ISSUE11 = ROOT / "bench" / "simulate" / "issue11"


def test_write_skips_files_it_cannot_render_and_goes_on(tmp_path):
    names = ("artifact_conv_x2", "paper_code", "static_bound", "paper_conv")  # in the glob's order
    for n in names:
        shutil.copy(ISSUE11 / f"{n}.json", tmp_path / f"{n}.json")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "simulate" / "table_of.py"), "--write",
                        *sorted(str(p) for p in tmp_path.glob("*.json"))], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["paper_code.txt", "paper_conv.txt"]
    for skipped in ("artifact_conv_x2.json", "static_bound.json"):
        assert f"{skipped}: not one run's table per policy" in r.stderr
    text = (tmp_path / "paper_code.txt").read_text()
    assert text.startswith("paper-code: 7 models on 2x8") and "\nwarmserve " in text
