"""bench/simulate/issue11/merge_policies.py: one policy's entries of a simulator JSON replaced by a later run of the
same workload, the ratios recomputed; runs of other workloads refused. On real `warmserve simulate` output."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[3] / "bench" / "simulate" / "issue11" / "merge_policies.py"
_spec = importlib.util.spec_from_file_location("merge_policies", _PATH)
MP = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(MP)


def _simulate(tmp_path, name, *args):
    out = tmp_path / f"{name}.json"
    subprocess.run([sys.executable, "-m", "warmserve", "simulate", "--preset", "scale", "--gpus", "8", "--models", "4",
                    "--duration-s", "300", "--seeds", "0", "--no-search", "--quiet", "--json", str(out), *args],
                   check=True, capture_output=True)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge")
    both = _simulate(tmp, "both", "--policy", "warmserve,autoscale")
    ws_b64 = _simulate(tmp, "ws", "--policy", "warmserve", "--policy-option", "instance_capacity=64")
    other = _simulate(tmp, "other", "--policy", "warmserve", "--rate-scale", "2")
    return both, ws_b64, other


def test_the_later_entry_replaces_the_earlier_and_the_ratio_follows(runs):
    both, ws_b64, _ = runs
    out = MP.merge(both, ws_b64, ["warmserve"], "ws.json")
    assert out["policies"]["warmserve"] == ws_b64["policies"]["warmserve"]
    assert out["policies"]["autoscale"] == both["policies"]["autoscale"]
    assert out["merged"] == {"warmserve": "ws.json"}
    want = both["policies"]["autoscale"]["ttft_p99_s"] / ws_b64["policies"]["warmserve"]["ttft_p99_s"]
    assert out["ratios"]["p99_ttft_autoscale_over_warmserve"] == pytest.approx(want)
    # the same run merged into itself changes nothing but the provenance
    same = MP.merge(both, both, ["warmserve"], "both.json")
    assert same["ratios"] == both["ratios"] and same["policies"] == both["policies"]


def test_a_run_of_another_workload_or_without_the_policy_is_refused(runs):
    both, ws_b64, other = runs
    with pytest.raises(SystemExit, match="workload"):
        MP.merge(both, other, ["warmserve"], "other.json")
    with pytest.raises(SystemExit, match="no policy 'autoscale'"):
        MP.merge(both, ws_b64, ["autoscale"], "ws.json")
