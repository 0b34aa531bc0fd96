"""bench/simulate/issue11/rerun_policies.py: the command rebuilt from a file's recorded arguments is the run that
wrote it (checked flag by flag against the committed files), and a re-run replaces the policies a warmserve default
moves while the baselines keep their entries."""

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from warmserve.sim.cli import add_arguments, check_args, run_args

_DIR = Path(__file__).resolve().parents[3] / "bench" / "simulate" / "issue11"
sys.path.insert(0, str(_DIR))  # the script imports merge_policies from its folder
_spec = importlib.util.spec_from_file_location("rerun_policies", _DIR / "rerun_policies.py")
RP = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(RP)


@pytest.mark.parametrize("name", ["paper_code.json", "paper_code_search_targets.json", "paper_conv_sweep.json",
                                  "paper_code_burst4_kvmap0.json", "artifact_code_cs35.json",
                                  "paper_conv_m12_x05_colocate_tp_off.json"])
def test_the_rebuilt_command_records_the_same_arguments(name):
    recorded = json.loads((_DIR / name).read_text())["args"]
    cmd = RP.command(recorded, ["warmserve"], "out.json")
    assert cmd[:2] == ["warmserve", "simulate"]
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(cmd[2:])
    check_args(args)  # refuses what the simulator would refuse; fills the defaults it records
    again = run_args(args)
    dropped = {"policy"} | ({"cold_start_band"} if recorded.get("sweep_rate") else set())
    # an option added since the file was written (--trace, 2026-12-06) is recorded as None, "not given", and its
    # absence is the same run: merge_policies.merge compares the two the same way (found: 6 failures on "trace")
    dropped |= {k for k, v in again.items() if v is None and k not in recorded}
    assert {k: v for k, v in again.items() if k not in dropped} == \
        {k: v for k, v in recorded.items() if k not in dropped}
    assert again["policy"] == "warmserve"


def test_a_rerun_replaces_warmserve_and_keeps_autoscale(tmp_path):
    base = tmp_path / "base.json"
    subprocess.run(["warmserve", "simulate", "--preset", "paper-conv", "--seeds", "0", "--policy",
                    "warmserve,autoscale", "--no-search", "--duration-s", "60", "--history-days", "0", "--quiet",
                    "--json", str(base)], check=True, capture_output=True)
    fresh = json.loads(base.read_text())
    doc = json.loads(base.read_text())
    for p in ("warmserve", "autoscale"):
        doc["policies"][p]["ttft_p99_s"] = 999.0  # marks what a re-run leaves alone
    base.write_text(json.dumps(doc))
    r = subprocess.run([sys.executable, str(_DIR / "rerun_policies.py"), str(base)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(base.read_text())
    assert out["policies"]["warmserve"] == fresh["policies"]["warmserve"]
    assert out["policies"]["autoscale"]["ttft_p99_s"] == 999.0
    assert out["merged"] == {"warmserve": "rerun_policies.py"}
    assert out["ratios"]["p99_ttft_autoscale_over_warmserve"] == pytest.approx(
        999.0 / fresh["policies"]["warmserve"]["ttft_p99_s"])


def test_a_file_without_recorded_arguments_fails_alone(tmp_path):
    """Each unusable file gets its own FAILED line (found in review: an unreadable one was a traceback that hid the
    others' lines), the exit status 1, and nothing is written over it."""
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"policies": {"warmserve": {}}}))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("garbage")
    r = subprocess.run([sys.executable, str(_DIR / "rerun_policies.py"), str(garbage), str(tmp_path / "none.json"),
                        str(bare)], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("FAILED") for line in lines)
    assert "records no arguments" in lines[2] and bare.read_text().startswith("{") and garbage.read_text() == "garbage"


@pytest.mark.parametrize("flags, says", [(["--policies", "bogus"], "unknown bogus"), (["--jobs", "0"], ">= 1")])
def test_an_unknown_policy_or_no_jobs_is_refused(tmp_path, flags, says):
    r = subprocess.run([sys.executable, str(_DIR / "rerun_policies.py"), *flags, str(tmp_path / "x.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and says in r.stderr
