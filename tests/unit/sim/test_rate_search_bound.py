"""The max-rate search stops at ``hi`` (16x the preset's rate by default): a rate that still meets the SLO there
was reported as the maximum, and a ratio of two such rates as a ratio (found in review). Now the search says the
figure is a lower bound, `simulate` prints it as ">= X rps" and leaves out a warmserve / shared ratio built on it.
Real simulator runs of a small preset (two models, 1 request/s): the SLO is met at its own rate."""

from __future__ import annotations

from warmserve.sim.cli import ratios_of
from warmserve.sim.cli_output import at_least
from warmserve.sim.presets import paper_preset
from warmserve.sim.runner import max_rate_under_slo


def test_a_search_that_meets_the_slo_where_it_stops_says_its_rate_is_a_lower_bound():
    p = paper_preset("conv", total_rate_rps=1.0, n_models=2, history_days=1)
    rate, tried, bound = max_rate_under_slo(p, "dedicated", hi=1.0, iters=1)
    assert [t["rate_scale"] for t in tried] == [1.0] and tried[0]["slo_attainment"] >= 0.99, tried
    assert bound and rate == tried[0]["offered_rate_rps"]

def test_a_lower_bound_is_printed_as_such_and_makes_no_ratio():
    ws = {"ttft_p99_s": 1.0, "slo_target": 0.99, "max_rate_under_slo_rps": 8.0,
          "max_rate_by_slo_target": {"0.99": 8.0, "0.9": 9.0}, "max_rate_lower_bound_at_slo_targets": ["0.9"]}
    shared = {"ttft_p99_s": 1.0, "slo_target": 0.99, "max_rate_under_slo_rps": 4.0,
              "max_rate_by_slo_target": {"0.99": 4.0, "0.9": 5.0}}
    ratios = ratios_of({"warmserve": ws, "shared": shared}, [0])
    assert ratios == {"max_rate_warmserve_over_shared": 2.0, "max_rate_warmserve_over_shared_at_slo_target_0.99": 2.0}
    assert at_least(ws, 0.9) == ">= " and at_least(ws, 0.99) == "" and at_least(shared, 0.9) == ""
    shared["max_rate_lower_bound_at_slo_targets"] = ["0.99"]
    assert ratios_of({"warmserve": ws, "shared": shared}, [0]) == {}
