"""bench/simulate/issue11/autoscale_best.py --reuse: autoscale's settings taken from the committed output and
warmserve's figures read again from the committed headline files give the committed output back (the evidence is
consistent), and a reuse file lacking a cell is refused."""

import json
import subprocess
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parents[3] / "bench" / "simulate" / "issue11"


def _run(*args):
    return subprocess.run([sys.executable, str(HERE / "autoscale_best.py"), *args], cwd=HERE, capture_output=True,
                          text=True)


def test_reuse_of_the_committed_file_reproduces_it(tmp_path):
    out = tmp_path / "again.json"
    r = _run("--reuse", str(HERE / "autoscale_best.json"), "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == json.loads((HERE / "autoscale_best.json").read_text())


def test_reuse_lacking_a_cell_is_refused(tmp_path):
    doc = json.loads((HERE / "autoscale_best.json").read_text())
    doc["rows"] = [r for r in doc["rows"] if not (r["preset"] == "paper-code" and r["cell"] == "traced_14s")]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(doc))
    r = _run("--reuse", str(partial), "--json", str(tmp_path / "x.json"))
    assert r.returncode != 0 and "lacks the cells" in r.stderr and "paper-code" in r.stderr


def test_reuse_with_other_seeds_is_refused(tmp_path):
    r = _run("--reuse", str(HERE / "autoscale_best.json"), "--seeds", "0,1", "--json", str(tmp_path / "x.json"))
    assert r.returncode != 0 and "seeds" in r.stderr


def test_overflow_reuse_of_the_committed_file_reproduces_it(tmp_path):
    """autoscale_overflow.py --reuse: its overflow runs kept, warmserve's figures and the best of 13 read again from
    autoscale_best.json, give the committed file back."""
    out = tmp_path / "again.json"
    r = subprocess.run([sys.executable, str(HERE / "autoscale_overflow.py"), "--reuse",
                        str(HERE / "autoscale_overflow.json"), "--json", str(out)], cwd=HERE, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == json.loads((HERE / "autoscale_overflow.json").read_text())


def test_seeds6_reuse_with_other_seeds_or_lacking_a_cell_is_refused(tmp_path):
    """autoscale_seeds6.py --reuse refuses before it simulates anything."""
    def run(*args):
        return subprocess.run([sys.executable, str(HERE / "autoscale_seeds6.py"), "--reuse",
                               str(HERE / "autoscale_seeds6.json"), "--json", str(tmp_path / "x.json"), *args],
                              cwd=HERE, capture_output=True, text=True, timeout=120)

    r = run("--seeds", "0,1,2")
    assert r.returncode != 0 and "seeds" in r.stderr
    r = run("--presets", "paper-conv")
    assert r.returncode != 0 and "lacks the cells" in r.stderr and "paper-conv" in r.stderr
    assert not (tmp_path / "x.json").exists()


def test_overflow_reuse_of_some_presets_keeps_the_other_cells(tmp_path):
    """--reuse X --json X with --presets paper-code rewrites paper-code's rows and keeps the other presets' (found in
    review: X was left with paper-code's five rows, and the next --reuse of it was refused)."""
    x = tmp_path / "x.json"
    x.write_text((HERE / "autoscale_overflow.json").read_text())
    r = subprocess.run([sys.executable, str(HERE / "autoscale_overflow.py"), "--reuse", str(x), "--json", str(x),
                        "--presets", "paper-code"], cwd=HERE, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(x.read_text()) == json.loads((HERE / "autoscale_overflow.json").read_text())
