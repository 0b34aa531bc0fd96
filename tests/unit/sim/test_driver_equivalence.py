"""The simulator is an executor of the policy driver and nothing more: one scripted scenario (arrivals, a burst, a
GPU loss) run by the simulator, then replayed into a fresh driver with the instant executor, takes the same
decisions at every call.

The simulator's run is recorded at the driver's door (every top-level driver call with its arguments) and at the
policy's (every route and tick: the state the policy saw and what it answered). The replay feeds the same driver
calls to a new policy and an instant executor; before each policy call it copies in what only an executor can
measure (KV blocks used and mapped, prewarm progress) and checks that everything the driver keeps (instances, their
readiness, load and draining, prewarms, queues, lost GPUs) is what the simulator's driver had. The answers must be
equal action for action.
"""

from dataclasses import replace

import numpy as np

from warmserve.policy.config import PolicyConfig
from warmserve.policy.driver import PolicyDriver
from warmserve.policy.instant import instant_driver
from warmserve.sim.config import SimConfig
from warmserve.sim.presets import paper_preset
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace

_ENTRIES = ("submit", "tick", "route", "route_all", "request_finished", "instance_ready", "lose_gpus",
            "prewarm_loaded", "prewarm_failed", "withdraw", "fail_waiting", "prefill_done")


class RecordingDriver(PolicyDriver):
    """Records the calls made from outside the driver (not the ones it makes to itself)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls: list = []
        self._depth = 0


def _recorded(name):
    base = getattr(PolicyDriver, name)

    def call(self, *args, **kwargs):
        if self._depth == 0:
            self.calls.append((name, args, kwargs))
        self._depth += 1
        try:
            return base(self, *args, **kwargs)
        finally:
            self._depth -= 1

    return call


for _name in _ENTRIES:
    setattr(RecordingDriver, _name, _recorded(_name))


def _kept_by_driver(state):
    return (tuple((i.instance_id, i.model, i.gpus, i.ready_s, i.in_flight, i.draining, i.kv_blocks_total,
                   i.kv_free_target) for i in state.instances.values()),
            tuple((p.prewarm_id, p.model, p.gpus, p.score) for p in state.prewarms.values()),
            tuple((m, tuple(q)) for m, q in state.queues.items()),
            tuple(g.gpu_id for g in state.gpus if g.gone))


def _measured(state):
    return ({i: (s.kv_blocks_used, s.kv_blocks_mapped) for i, s in state.instances.items()},
            {p: s.progress for p, s in state.prewarms.items()})


class PolicyTap:
    """Wraps a policy: logs each decision; in replay, restores the measured fields and checks the driver's."""

    def __init__(self, policy, replay=None):
        self.policy = policy
        self.replay = replay
        self.log: list = []
        self.seen: list = []

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def _before(self, state):
        if self.replay is None:
            self.seen.append((_kept_by_driver(state), _measured(state)))
            return
        kept, (kv, progress) = self.replay[len(self.log)]
        for iid, (used, mapped) in kv.items():
            if iid in state.instances:
                state.instances[iid].kv_blocks_used, state.instances[iid].kv_blocks_mapped = used, mapped
        for pid, f in progress.items():
            if pid in state.prewarms:
                state.prewarms[pid].progress = f
        assert _kept_by_driver(state) == kept, f"driver state differs before decision {len(self.log)}"

    def route(self, state, model, now_s, request_id=None):
        self._before(state)
        act = self.policy.route(state, model, now_s, request_id)
        self.log.append(("route", now_s, model, act))
        return act

    def tick(self, state, now_s):
        self._before(state)
        acts = self.policy.tick(state, now_s)
        self.log.append(("tick", now_s, tuple(acts)))
        return acts


def _scenario(n_gpus=8):
    p = paper_preset("conv", total_rate_rps=3.0, n_models=3, history_days=1,
                     config=SimConfig(n_servers=1, gpus_per_server=n_gpus))
    w = p.build(1.0, 6)  # a seed whose scenario has what the checks need (a start from a prewarm, an instance on
    # the GPUs lost, co-serving on 4 GPUs): a coverage choice, checked by the asserts; the decisions are compared
    w.duration_s = 240.0
    tr = w.trace
    keep = tr.arrival_s < w.duration_s
    n_burst = 80  # one model gets a burst at t = 100 s: a scale-out
    w.trace = Trace(tr.models, np.concatenate([tr.arrival_s[keep], 100.0 + np.linspace(0, 2.0, n_burst)]),
                    np.concatenate([tr.model[keep], np.zeros(n_burst, np.int32)]),
                    np.concatenate([tr.prompt_tokens[keep], np.full(n_burst, 512)]),
                    np.concatenate([tr.output_tokens[keep], np.full(n_burst, 200)]))
    return p, w


def test_simulator_and_instant_executor_take_the_same_decisions():
    _same_decisions()


def test_same_decisions_with_light_models_co_served():
    """Co-serving on: light models start co-served (kv_fraction < 1); the same decisions, action for action."""
    starts = _same_decisions(PolicyConfig(coserve_always=True))
    assert any(a.kv_fraction < 1 for a in starts)


def test_same_decisions_on_an_over_subscribed_cluster():
    """Four GPUs for a 7B, a 13B and a 70B (seven GPUs for one instance each): co-serving engages by itself, the
    70B time-shares; the same decisions, action for action."""
    starts = _same_decisions(n_gpus=4)
    assert any(a.kv_fraction < 1 for a in starts)


def _same_decisions(policy_config=None, n_gpus=8):
    p, w = _scenario(n_gpus)
    cfg = p.config if policy_config is None else replace(p.config, policy_config=policy_config)
    losses = [(150.0, (0, 1))]  # a worker with two GPUs dies mid-burst
    sim = Simulator(w, p.models, "warmserve", config=cfg, gpu_losses=losses)
    tap = PolicyTap(sim.policy)
    sim.driver = RecordingDriver(tap, sim.state, sim)
    result = sim.run()

    calls = sim.driver.calls
    kinds = {c[0] for c in calls}
    assert {"submit", "tick", "instance_ready", "request_finished", "lose_gpus"} <= kinds
    lost_at = next(k for k, c in enumerate(calls) if c[0] == "lose_gpus")
    assert any(c[0] == "submit" for c in calls[lost_at:])  # the scenario goes on after the loss
    starts = [a for entry in tap.log for a in (entry[2] if entry[0] == "tick" else (entry[3],))
              if type(a).__name__ == "StartInstance"]
    assert len({a.model for a in starts}) >= 2 and any(a.prewarm_id for a in starts)
    assert [g.gpu_id for g in sim.state.gpus if g.gone] == [0, 1]
    t_loss = calls[lost_at][1][1]
    before = tap.seen[next(k for k, e in enumerate(tap.log) if e[1] >= t_loss) - 1][0]
    assert any(set(i[2]) & {0, 1} for i in before[0])  # the lost GPUs carried a serving instance
    assert result.summary["completed"] > 0

    fresh = Simulator(w, p.models, "warmserve", config=cfg)  # a new policy and state, built the same way
    replay = PolicyTap(fresh.policy, replay=tap.seen)
    driver = instant_driver(replay, fresh.state, start_ready=False)
    for name, args, kwargs in calls:
        getattr(driver, name)(*args, **kwargs)
    assert len(replay.log) == len(tap.log)
    for k, (a, b) in enumerate(zip(tap.log, replay.log)):
        assert a == b, f"decision {k} differs"
    return starts
