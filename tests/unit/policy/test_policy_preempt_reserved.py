"""Time-sharing never takes a group that holds GPUs freed for another model (found in review): on 4 GPUs a 70B
(tp 4) held three of them reserved while a 13B (tp 2) preempted its way onto the fourth for a group whose other GPU
was among the three; each waited for a GPU the other held, nothing ever started again, and every request of every
model waited to the end of the run."""

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.arbitration import preemption_victims
from warmserve.policy.instant import instant_driver
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30


def test_a_group_with_a_gpu_reserved_for_another_model_does_not_qualify():
    small = ModelInfo("small", 13_500_000_000, 1, 524_288, 0.035, 0.015)
    mid = ModelInfo("mid", 26_000_000_000, 2, 819_200, 0.05, 0.02)
    models = [small, mid]
    st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=72 * GiB)
    d = instant_driver(make_policy("warmserve", models=models,
                                   config=PolicyConfig(replan_s=1e9, colocate_when_oversubscribed=False)), st)
    d.apply(A.StartInstance("s0", "small", (1,)), 0.0)
    d.apply(A.StartInstance("s1", "small", (3,)), 0.0)
    board = Board(st, {})
    load = {"small": 1.0, "mid": 10.0}
    got = preemption_victims(st, board, "mid", 100.0, load, set(), 30.0)
    assert got is not None and [v.instance_id for v in got[1]] == ["s0"]  # group (0, 1): its lowest
    got = preemption_victims(st, board, "mid", 100.0, load, set(), 30.0, reserved={0})
    assert got is not None and [v.instance_id for v in got[1]] == ["s1"]  # (0, 1) holds a reserved GPU
    assert preemption_victims(st, board, "mid", 100.0, load, set(), 30.0, reserved={0, 2}) is None


def test_short_turns_on_four_gpus_serve_every_request():
    """The review's run: paper-conv's 7B, 13B and 70B on one 4-GPU server, 2 rps, turns of 5 s."""
    from warmserve.policy.config import parse_policy_options
    from warmserve.sim.config import SimConfig
    from warmserve.sim.presets import paper_preset
    from warmserve.sim.simulator import Simulator
    from warmserve.workload.recipes import paper_workload

    cfg = SimConfig(n_servers=1, gpus_per_server=4, policy_config=parse_policy_options(["preempt_after_s=5"]))
    preset = paper_preset("conv", total_rate_rps=2.0, n_models=3, config=cfg)
    w = paper_workload("conv", 3, alpha=1.0, total_rate_rps=2.0, model_names=[m.name for m in preset.models],
                       seed=0, duration_s=40.0)
    sim = Simulator(w, preset.models, "warmserve", config=cfg)
    s = sim.run().summary
    assert s["requests"] > 50
    assert s["unanswered"] == 0, (s["unanswered"], sim.policy._reserved)
    assert not any(sim.state.queues.values())
