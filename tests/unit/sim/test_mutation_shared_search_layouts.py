"""What `shared`'s layout search builds its candidates from: the per-model rates and means of the workload before
the measured span, the demand weights that lay replicas and KV shares out, and the group splits it tries (all of
them on a small cluster, those near the proportional split past ``MAX_CANDIDATES``)."""

from dataclasses import replace

import numpy as np
import pytest

from warmserve.policy.state import ClusterState
from warmserve.sim.presets import paper_preset
from warmserve.sim.shared_search import MAX_CANDIDATES, _splits, placeable_layout, workload_stats
from warmserve.sim.simulator import Simulator


def _sim():
    p = paper_preset("conv", total_rate_rps=1.0, n_models=2, history_days=1)
    w = p.build(1.0, 0)
    return Simulator(w, p.models, "shared", config=replace(p.config, shared_search=False))


def test_workload_stats_are_rates_over_the_history_spans_and_mean_lengths():
    """Per model: its history requests over the time the history's stretches cover (not the gaps between them),
    and the mean prompt and output tokens of those requests."""
    sim = _sim()
    h = sim.workload.history
    span = sum(b - a for a, b in sim.workload.history_spans)
    stats = workload_stats(sim)
    assert set(stats) == set(sim.names)
    for name in sim.names:
        sel = h.model == h.models.index(name)
        assert sel.sum() > 0
        lam, p, o = stats[name]
        assert lam == pytest.approx(sel.sum() / span)
        assert p == pytest.approx(float(np.mean(h.prompt_tokens[sel])))
        assert o == pytest.approx(float(np.mean(h.output_tokens[sel])))


def test_candidate_layouts_carry_each_model_s_demand_at_a_batch_of_16():
    """The demand weight of a model: its rate times the GPU-seconds a request takes on its own instance at a
    batch of 16 (its prefill, then its output tokens' share of 16-sequence decode steps reading their KV)."""
    sim = _sim()
    stats = workload_stats(sim)
    demand = dict(placeable_layout(sim).demand)
    assert set(demand) == set(sim.names)
    for name, (lam, p, o) in stats.items():
        c = sim.mcost[sim.midx[name]]
        step = sim.cost.decode_step_s(c, 16, int(16 * (p + o / 2)))
        assert demand[name] == pytest.approx(lam * (sim.cost.prefill_s(c, int(p)) + o * step / 16), rel=1e-9)


def test_a_small_cluster_tries_every_split_that_leaves_the_smallest_class_a_group():
    """16 GPUs, tp classes 4, 2 and 1: every count of 4-GPU and 2-GPU groups that leaves at least one GPU, the
    tp-1 class taking the rest."""
    splits = list(_splits(ClusterState.uniform(2, [], gpus_per_server=8), {4: [], 2: [], 1: []}, {4: 1, 2: 2}))
    want = [((4, a), (2, b), (1, 16 - 4 * a - 2 * b)) for a in range(1, 5) for b in range(1, 9) if 4 * a + 2 * b < 16]
    assert splits == want and len(splits) == 9


def test_a_large_cluster_keeps_to_splits_near_the_proportional_one():
    """64 GPUs would give 16 x 32 splits, over ``MAX_CANDIDATES``: each class's group count is kept between half
    and twice its proportional count (4 -> 2..8 groups of 4, 8 -> 4..16 groups of 2)."""
    assert 16 * 32 > MAX_CANDIDATES
    splits = list(_splits(ClusterState.uniform(8, [], gpus_per_server=8), {4: [], 2: [], 1: []}, {4: 4, 2: 8}))
    want = [((4, a), (2, b), (1, 64 - 4 * a - 2 * b)) for a in range(2, 9) for b in range(4, 17) if 4 * a + 2 * b < 64]
    assert splits == want and len(splits) == 90
