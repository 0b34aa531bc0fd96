"""bench/replay/twin_medians.py: the twin against the median of repeated live runs of one workload, on the stored
live replays and twins (bench/replay/results_fresh_ts015*.json, twins_host_cores.json)."""

import importlib.util
import json
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("twin_medians", _ROOT / "bench" / "replay" / "twin_medians.py")
TM = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(TM)


def _twins():
    with open(_ROOT / "bench" / "replay" / "twins_host_cores.json") as f:
        rows = json.load(f)
    for r in rows:  # the stored paths are relative to the repository root
        r["file"] = str(_ROOT / r["file"])
    return rows


def test_runs_of_one_workload_are_grouped_and_compared_with_their_median():
    rows = _twins()
    runs = [r for r in rows if "fresh_ts015" in r["file"]]
    assert len(runs) >= 7
    gs = TM.groups(rows, ["results_fresh_ts015*.json"])
    assert len(gs) == 1 and len(gs[0]["runs"]) == len(runs)  # one workload: options added later absent in 1-2
    w = gs[0]["policies"]["warmserve"]["p99"]
    live = sorted(r["policies"]["warmserve"]["live_p99_s"] for r in runs)
    median = (live[(len(live) - 1) // 2] + live[len(live) // 2]) / 2
    assert w["live_median_s"] == pytest.approx(median) and (w["live_min_s"], w["live_max_s"]) == (live[0], live[-1])
    assert w["sim_over_live_median"] == pytest.approx(w["sim_s"] / median)
    everything = TM.groups(rows, [])  # the x0.5 run and the over-subscribed runs are other workloads
    assert sorted(len(g["runs"]) for g in everything) == [1, 6, len(runs)]


def test_runs_whose_twins_differ_are_not_one_workload():
    rows = [r for r in _twins() if "fresh_ts015" in r["file"]]
    rows[1]["policies"]["autoscale"]["sim_p50_s"] *= 2
    with pytest.raises(ValueError, match="twins differ"):
        TM.groups(rows, [])
