"""The static baselines' layouts are chosen by the SLO of the run they are for (found in review): `shared`'s
search picked by its analytic throughput score and passed over a candidate of its own that met the SLO better;
`dedicated` kept its own layout where the one-model-per-group layout of shared's search served the same GPUs
better."""

from dataclasses import replace

from warmserve.sim.presets import paper_preset
from warmserve.sim.simulator import Simulator


def test_shared_search_picks_the_candidate_with_the_best_simulated_slo():
    # the review's case: the best score, ((4,1),(2,3),(1,6)) one per group, meets the SLO for 0.956 of the
    # requests; ((4,2),(2,2),(1,4)) two per group, scored lower, for 0.987
    p = paper_preset("code")
    w = p.build(0.5, 1)
    sim = Simulator(w, p.models, "shared", config=p.config)
    rec = sim.shared_search
    assert sim.policy.layout.groups == ((4, 2), (2, 2), (1, 4)) and sim.policy.layout.per_group == 2
    tried = rec["simulated"]
    top_score = max(c["rate_multiple"] for c in tried)
    assert rec["rate_multiple"] < top_score  # chosen despite a lower score
    assert rec["slo_attainment"] == max(c["slo_attainment"] for c in tried) > 0.98
    assert sim.run().summary["slo_attainment"] == rec["slo_attainment"]  # the run is the one simulated


def test_dedicated_gets_the_one_model_per_group_layout_when_it_serves_the_run_better():
    # the review's case: paper-code as traced, dedicated's own layout P99 7.77 s, one model per group 3.46 s on
    # the same 16 GPUs
    p = paper_preset("code")
    w = p.build(1.0, 0)
    sim = Simulator(w, p.models, "dedicated", config=p.config)
    s = sim.run().summary
    assert s["ttft_p99_s"] < 3.5
    rec = sim.dedicated_layout
    assert rec["chosen"] == "searched" and sim.policy.layout.per_group == 1
    assert rec["own"]["ttft_p99_s"] > 7.0 and s["slo_attainment"] > rec["own"]["slo_attainment"]
    # without the search (as `shared` then keeps its default layout) dedicated keeps its own
    own = Simulator(w, p.models, "dedicated", config=replace(p.config, shared_search=False))
    assert own.policy.layout is None and own.dedicated_layout is None
    assert own.run().summary["ttft_p99_s"] == rec["own"]["ttft_p99_s"]
