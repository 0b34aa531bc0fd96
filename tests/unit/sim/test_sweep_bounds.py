"""A max rate under the SLO that is only a lower bound, in the tables (found in review): the search's lower bound
(the SLO still met at 16x, where it stops) was printed in `simulate`'s table as a plain figure, though stderr and
the JSON said ">= X rps"; and a --sweep-rate whose highest swept rate still met the target showed that rate as its
max swept rate under the SLO, in the table and the JSON, with nothing to say the true one lies higher. Small real
runs (2 models, 30 s, 0.5 rps at scale 1: the SLO is met at every rate tried)."""

from __future__ import annotations

import json

from warmserve import cli
from warmserve.sim import cli as sim_cli
from warmserve.sim.cli_output import summary_table
from warmserve.sim.runner import highest_rate_meeting, max_rate_under_slo

SMALL = ["simulate", "--workload", "paper-conv", "--gpus", "8", "--models", "2", "--duration-s", "30",
         "--rate", "0.5", "--policy", "warmserve", "--quiet"]


def _row(table: str, name: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.split()[0] == name)


def test_the_table_marks_a_max_rate_that_is_only_a_lower_bound():
    bounded = {"slo_target": 0.99, "max_rate_under_slo_rps": 7.916, "max_rate_lower_bound_at_slo_targets": ["0.99"]}
    found = {"slo_target": 0.99, "max_rate_under_slo_rps": 4.0}
    other_target = {"slo_target": 0.99, "max_rate_under_slo_rps": 5.0, "max_rate_lower_bound_at_slo_targets": ["0.9"]}
    t = summary_table({"warmserve": bounded, "shared": found, "dedicated": other_target, "autoscale": {}})
    assert _row(t, "warmserve")[-1] == ">=7.92"
    assert _row(t, "shared")[-1] == "4.00" and _row(t, "dedicated")[-1] == "5.00"  # bound at another target only
    assert _row(t, "autoscale")[-1] == "-"  # no search


def test_simulate_prints_a_search_that_met_the_slo_where_it_stops_as_a_lower_bound(monkeypatch, tmp_path, capsys):
    # the search stopped at 1x (not 16x) so that it is one run: the SLO is met there, so the rate is a lower bound
    monkeypatch.setattr(sim_cli, "max_rate_under_slo", lambda *a, **k: max_rate_under_slo(*a, **{**k, "hi": 1.0}))
    out = tmp_path / "r.json"
    assert cli.main([*SMALL, "--search-iters", "0", "--json", str(out)]) == 0
    s = json.loads(out.read_text())["policies"]["warmserve"]
    assert s["max_rate_lower_bound_at_slo_targets"] == ["0.99"]
    assert _row(capsys.readouterr().out, "warmserve")[-1] == f">={s['max_rate_under_slo_rps']:.2f}"


def test_a_sweep_whose_highest_rate_meets_the_slo_says_its_max_is_a_lower_bound(tmp_path, capsys):
    out = tmp_path / "sw.json"
    assert cli.main([*SMALL, "--sweep-rate", "0.5,1", "--json", str(out)]) == 0
    pol = json.loads(out.read_text())["sweep"]["policies"]["warmserve"]
    assert all(pt["slo_attainment"] >= 0.99 for pt in pol["points"])
    assert pol["max_swept_rate_under_slo_rps"] == pol["points"][-1]["offered_rate_rps"]
    assert pol["max_swept_rate_is_lower_bound"] is True
    assert _row(capsys.readouterr().out, "warmserve")[-1] == f">={pol['max_swept_rate_under_slo_rps']:.1f}"


def test_a_swept_max_below_a_failing_rate_is_no_lower_bound():
    from warmserve.sim.runner import swept_rate_is_lower_bound

    pts = [{"offered_rate_rps": r, "slo_attainment": a} for r, a in ((1, 1.0), (2, 0.995), (4, 0.9))]
    assert highest_rate_meeting(pts, 0.99) == 2 and not swept_rate_is_lower_bound(pts, 0.99)
    assert highest_rate_meeting(pts[:2], 0.99) == 2 and swept_rate_is_lower_bound(pts[:2], 0.99)
    assert not swept_rate_is_lower_bound(pts[2:], 0.99)  # the lowest fails: 0, a finding, not a bound
    assert not swept_rate_is_lower_bound([{"offered_rate_rps": 1, "slo_attainment": float("nan")}], 0.99)
    assert not swept_rate_is_lower_bound([], 0.99)


def test_the_hit_rate_of_a_run_that_started_no_instance_is_no_figure():
    """Found in review: `shared` (no start in the run) showed hit 0.00, read as every start missed."""
    none = {"instance_starts": 0, "prewarm_hit_rate": 0.0, "throughput_rps": 1.0}
    some = {"instance_starts": 4, "prewarm_hit_rate": 0.0, "throughput_rps": 1.0}
    t = summary_table({"shared": none, "warmserve": some})
    hit = 8  # policy, TTFT mean, p50, p90, p99, TPOT p50, SLO, thr rps, hit
    assert _row(t, "shared")[hit] == "-" and _row(t, "warmserve")[hit] == "0.00"
