"""bench/simulate/issue11/merge_policies.py: one policy's entries of a simulator JSON replaced by a later run of the
same workload, the ratios recomputed; runs of other workloads refused. On real `warmserve simulate` output."""

import importlib.util
import json
from pathlib import Path

import pytest

from warmserve import cli

_PATH = Path(__file__).resolve().parents[3] / "bench" / "simulate" / "issue11" / "merge_policies.py"
_spec = importlib.util.spec_from_file_location("merge_policies", _PATH)
MP = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(MP)


def _simulate(tmp_path, name, *args):
    # `warmserve simulate` in this process (the command's own entry point, as `python -m warmserve` calls it): the
    # four runs share one load of the ServeGen trace, which a process of its own each read again (~4 s apiece)
    out = tmp_path / f"{name}.json"
    assert cli.main(["simulate", "--preset", "scale", "--gpus", "8", "--models", "4", "--duration-s", "120",
                     "--seeds", "0", "--no-search", "--quiet", "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge")
    both = _simulate(tmp, "both", "--policy", "warmserve,autoscale")
    ws_b64 = _simulate(tmp, "ws", "--policy", "warmserve", "--policy-option", "instance_capacity=64")
    other = _simulate(tmp, "other", "--policy", "warmserve", "--rate-scale", "2")
    profile = tmp / "kv_map_free.json"
    profile.write_text(json.dumps({"schema": "warmserve.sim.profile/1", "kv_map_s_per_gib": 0.0}))
    cheaper = _simulate(tmp, "cheaper", "--policy", "warmserve", "--profile", str(profile))
    return both, ws_b64, other, cheaper


def test_the_later_entry_replaces_the_earlier_and_the_ratio_follows(runs):
    both, ws_b64, *_ = runs
    assert both["args"]["policy"] == "warmserve,autoscale" and "json" not in both["args"]
    # the policy option differs, so the runs' recorded arguments do: refused unless the caller says so
    with pytest.raises(SystemExit, match="policy_option"):
        MP.merge(both, ws_b64, ["warmserve"], "ws.json")
    out = MP.merge(both, {**ws_b64, "args": {**ws_b64["args"], "policy_option": []}}, ["warmserve"], "ws.json")
    assert out["policies"]["warmserve"] == ws_b64["policies"]["warmserve"]
    assert out["policies"]["autoscale"] == both["policies"]["autoscale"]
    assert out["merged"] == {"warmserve": "ws.json"}
    want = both["policies"]["autoscale"]["ttft_p99_s"] / ws_b64["policies"]["warmserve"]["ttft_p99_s"]
    assert out["ratios"]["p99_ttft_autoscale_over_warmserve"] == pytest.approx(want)
    # the same run merged into itself changes nothing but the provenance
    same = MP.merge(both, both, ["warmserve"], "both.json")
    assert same["ratios"] == both["ratios"] and same["policies"] == both["policies"]


def test_a_run_of_another_workload_cost_or_without_the_policy_is_refused(runs):
    both, ws_b64, other, cheaper = runs
    with pytest.raises(SystemExit, match="workload"):
        MP.merge(both, other, ["warmserve"], "other.json")
    # found in review: a cheaper KV mapping (another --profile) has the same workload and merged silently
    with pytest.raises(SystemExit, match="profile"):
        MP.merge(both, cheaper, ["warmserve"], "cheaper.json")
    with pytest.raises(SystemExit, match="no policy 'autoscale'"):
        MP.merge(both, {**ws_b64, "args": both["args"]}, ["autoscale"], "ws.json")


def test_a_file_that_records_no_arguments_is_merged_only_when_the_caller_vouches(runs):
    both, *_ = runs
    old = {k: v for k, v in both.items() if k != "args"}
    with pytest.raises(SystemExit, match="--assume-same-options"):
        MP.merge(old, both, ["warmserve"], "both.json")
    assert MP.merge(old, both, ["warmserve"], "both.json", assume_same_options=True)["policies"] == both["policies"]


def test_a_file_written_before_the_offered_rate_was_recorded_is_the_same_workload(runs):
    both, *_ = runs
    meta = both["workload"]["meta"]
    assert meta["offered_rate_rps"] == pytest.approx(meta["expected_rate_rps"] / meta["time_scale"])
    old = {**both, "workload": {**both["workload"], "meta": {k: v for k, v in meta.items() if k != "offered_rate_rps"}}}
    assert MP.merge(old, both, ["warmserve"], "both.json")["policies"] == both["policies"]
    # a recorded rate that does not follow from the others is a difference
    wrong = {**both, "workload": {**both["workload"],
                                  "meta": {**meta, "offered_rate_rps": 2 * meta["offered_rate_rps"]}}}
    with pytest.raises(SystemExit, match="workload"):
        MP.merge(old, wrong, ["warmserve"], "wrong.json")


def test_a_file_written_before_2026_12_01_merges_with_a_new_run_of_the_same_command(runs):
    # Since then: meta records realised_rate_rps, options not given are recorded as None (history_days,
    # start_hour, cold_start_band: earlier runs recorded their defaults), and a run of several seeds records each
    # seed's request count with their median as "requests" (earlier: the first seed's count alone)
    both, *_ = runs
    assert "realised_rate_rps" in both["workload"]["meta"] and both["args"]["history_days"] is None
    meta = {k: v for k, v in both["workload"]["meta"].items() if k != "realised_rate_rps"}
    seed = str(meta["seed"])
    first = both["workload"]["requests"]
    old = {**both, "workload": {**both["workload"], "meta": meta},
           "args": {**both["args"], "history_days": 2, "start_hour": 20.0, "cold_start_band": "14,35"}}
    new = {**both, "workload": {**both["workload"], "requests": first + 5.5,
                                "requests_per_seed": {seed: first, "99": first + 11}}}
    assert MP.merge(old, new, ["warmserve"], "new.json")["policies"] == both["policies"]
    # a first seed's count that is not the old file's, or an option set otherwise, is still a difference
    moved = {**new, "workload": {**new["workload"], "requests_per_seed": {seed: first + 1, "99": first + 10}}}
    with pytest.raises(SystemExit, match="workload"):
        MP.merge(old, moved, ["warmserve"], "moved.json")
    with pytest.raises(SystemExit, match="history_days 2 against 3"):
        MP.merge(old, {**both, "args": {**both["args"], "history_days": 3}}, ["warmserve"], "h3.json")
