"""One tick's action list, co-serving on: no action refers to an instance the same list stopped earlier, no
instance is both started and stopped (or stopped and revived) in one list, and after the driver applies it no
GPU's memory is over-committed nor shared by a dedicated instance. Found in review (each fixed scenario failed
before its fix, and so did random seeds 17, 27 and 110): a merge moved a model the same tick had scaled to zero,
and a join took a host whose only instance the same tick had stopped and whose GPU it had given to a dedicated
instance. Checked on fixed scenarios and on random ones over seeds through the real driver (instant executor),
and on the simulator's workload."""

import random

import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import actions as A
from warmserve.policy.colocating import RELAY_WAIT_S
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo
from warmserve.sim.config import SimConfig
from warmserve.sim.presets import scale_preset
from warmserve.sim.simulator import Simulator

GiB = 1 << 30


def _7b(name):
    return ModelInfo(name, 13_500_000_000, 1, 524_288, 0.035, 0.015)


def _13b(name):
    return ModelInfo(name, 26_000_000_000, 2, 819_200, 0.070, 0.020)


def plan_errors(acts, before: set[str], pol) -> list[str]:
    """What is wrong with one tick's list ``acts`` (``before``: instance ids in the state when the tick began);
    empty when nothing. A Migrate after a StopInstance of the same instance is by design (the migration plan
    hands a stopped instance's requests over) and so is a Prewarm keeping a stopped instance's weights."""
    errors = []
    stopped_at: dict[str, int] = {}
    started_at: dict[str, int] = {}
    revived: set[str] = set()
    for k, a in enumerate(acts):
        kind = type(a)
        iid = getattr(a, "instance_id", None)
        if kind is A.StartInstance:
            if iid in before or iid in started_at:
                errors.append(f"{k}: {iid} started twice")
            started_at[iid] = k
        elif kind is A.StopInstance:
            if iid in stopped_at:
                errors.append(f"{k}: {iid} stopped twice")
            if iid in started_at:
                errors.append(f"{k}: {iid} started and stopped in one tick")
            if iid in revived:
                errors.append(f"{k}: {iid} revived and stopped in one tick")
            stopped_at.setdefault(iid, k)
        elif kind is A.Migrate:
            if iid in started_at or iid in revived or iid not in before:
                errors.append(f"{k}: migrates {iid}, started or revived in this tick, or unknown")
            stopped_at.setdefault(iid, k)
        elif kind in (A.ReviveInstance, A.Dedicate, A.SetKvTarget, A.Route):
            if iid in stopped_at:
                errors.append(f"{k}: {a} refers to {iid}, stopped earlier in the tick at {stopped_at[iid]}")
            if kind is A.ReviveInstance:
                revived.add(iid)
    co = pol._co
    moves = list(co.merging.values()) if co is not None else []
    moves += [(old, new) for new, old in pol._moving.items()]
    for old, new in moves:  # a move made this tick replaces an instance that this tick had already stopped
        if new in started_at and old in stopped_at and stopped_at[old] < started_at[new]:
            errors.append(f"{started_at[new]}: {new} moves {old}, stopped earlier in the tick at {stopped_at[old]}")
    return errors


def state_errors(st: ClusterState, pol) -> list[str]:
    """GPUs over-committed (instances' shards and mapped KV plus prewarms beyond the pool), or shared by an
    instance that is not co-served (only co-served instances share GPUs: a dedicated one maps all of them)."""
    errors = []
    for g, free in enumerate(st.free_bytes_on()):
        if free < 0 and not st.gpus[g].gone:
            errors.append(f"GPU {g} over-committed by {-free} bytes: "
                          f"{[i.instance_id for i in st.instances.values() if g in i.gpus]} "
                          f"{[p.prewarm_id for p in st.prewarms.values() if g in p.gpus]}")
    co_ids = pol._co.ids if pol._co is not None else set()
    on_gpu: dict[int, list[str]] = {}
    for inst in st.instances.values():
        for g in inst.gpus:
            on_gpu.setdefault(g, []).append(inst.instance_id)
    for g, ids in on_gpu.items():
        if len(ids) > 1 and not set(ids) <= co_ids:
            errors.append(f"GPU {g} shared by {ids}, co-served: {sorted(set(ids) & co_ids)}")
    return errors


class Checked:
    """Wraps a policy's tick: every list it returns is checked (``plan_errors``) before the driver applies it."""

    def __init__(self, pol):
        self.pol, self.tick, self.errors, self.lists = pol, pol.tick, [], []
        pol.tick = self

    def __call__(self, state, now_s):
        before = set(state.instances)
        acts = self.tick(state, now_s)
        self.lists.append((now_s, acts))
        self.errors += [f"t={now_s}: {e}" for e in plan_errors(acts, before, self.pol)]
        return acts


def _started(acts, model):
    return [a for a in acts if type(a) is A.StartInstance and a.model == model]


# ---- fixed scenarios -------------------------------------------------------------------------------------------


def test_a_model_scaled_to_zero_is_not_merged_onto_a_host_in_the_same_tick():
    """`a` (dedicated, GPU 4) has had no load for the load window: idle_to_zero stops it. `b` runs co-served on
    GPU 8. The same tick's consolidating merge moved `a` onto b's host: a start of the model just stopped,
    stopped again 5 s later."""
    models = [_7b("a"), _7b("b")]
    st = ClusterState.uniform(3, models, gpus_per_server=4, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(
        replan_s=1e9, window_s=1e6, consolidate=True, idle_to_zero=True, migrate_max_in_flight=0))
    d = instant_driver(pol, st)
    for iid, m, g, kv in (("a0", "a", (4,), 1.0), ("b0", "b", (8,), 0.3)):
        d.apply(A.StartInstance(iid, m, g, kv_fraction=kv), 0.0)
    pol._co.ids.add("b0")
    pol._plan_window = 0
    d.submit("b", "b-r", 1.0)
    chk = Checked(pol)
    for t in range(1, 12):
        d.tick(float(t))
    ((t_stop, acts),) = [(t, acts) for t, acts in chk.lists if "a0" in A.stopping(acts)]
    assert not _started(acts, "a"), (t_stop, acts)  # was a new `a` on b0's host, stopped again at 10 s
    assert not chk.errors, chk.errors
    assert not _live(st, "a") and [i.instance_id for i in _live(st, "b")] == ["b0"]


def test_a_model_scaled_to_zero_opens_no_host_in_the_same_tick():
    """Quiet `a` (one request) and idle `c` run dedicated on GPUs 0 and 1, no host yet. idle_to_zero stops c0;
    the same tick's consolidating merge opened a new host for `c` (from the weights its stop had just kept), `a`
    moved there the next tick, and both new instances were stopped again within 8 s."""
    models = [_7b("a"), _7b("c")]
    st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(
        replan_s=1e9, window_s=1e6, consolidate=True, idle_to_zero=True))
    d = instant_driver(pol, st)
    for iid, m, g in (("a0", "a", (0,)), ("c0", "c", (1,))):
        d.apply(A.StartInstance(iid, m, g), 0.0)
    pol._plan_window = 0
    d.submit("a", "a-r", 1.0)
    chk = Checked(pol)
    for t in range(1, 16):
        d.tick(float(t))
    starts = [a for _, acts in chk.lists for a in acts if type(a) is A.StartInstance]
    assert not starts, starts  # was c/i2 on GPU 1 at 5 s (c0 stopped in the same list), then a onto it
    assert not chk.errors, chk.errors
    assert [i.instance_id for i in _live(st, "a")] == ["a0"] and not _live(st, "c")


def test_a_join_takes_no_host_whose_only_instance_the_tick_stopped():
    """Four GPUs: idle `x` co-served alone on GPU 0, quiet `q` dedicated on GPU 1, busy f1 and f2 on GPUs 2 and 3.
    W and V (60 GiB each, too large to co-serve) arrive and wait: over-subscribed. At 9 s x0 and q0 pass the
    minimum lifetime: x0 stops (GPUs are wanted), V starts on GPU 0, and q's merge joined "x's host" on GPU 0
    beside V: a GPU counted free and a host at once, over-committed by 24 GiB."""
    models = [_7b("x"), _7b("q"), _7b("f1"), _7b("f2"), ModelInfo("W", 60 * GiB, 1, 524_288, 0.035, 0.015),
              ModelInfo("V", 60 * GiB, 1, 524_288, 0.035, 0.015)]
    st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(replan_s=1e9, window_s=1e6,
                                                                      migrate_max_in_flight=0))
    d = instant_driver(pol, st)
    co = pol._co
    d.apply(A.StartInstance("f1-0", "f1", (2,)), 0.0)
    d.apply(A.StartInstance("f2-0", "f2", (3,)), 0.0)
    pol._plan_window = 0
    for k in range(24):  # light, but not quiet enough to move
        d.submit("f1", f"f1-{k}", 1.0)
        d.submit("f2", f"f2-{k}", 1.0)
    chk = Checked(pol)
    for t in range(1, 12):
        if t == 4:
            d.apply(A.StartInstance("x0", "x", (0,), kv_fraction=co.kv_fraction("x", 72 * GiB)), 3.5)
            co.ids.add("x0")
            d.apply(A.StartInstance("q0", "q", (1,)), 3.5)
            d.submit("q", "q-r", 3.6)
        if t == 7:
            for k in range(10):
                d.submit("W", f"W{k}", 6.5)
                d.submit("V", f"V{k}", 6.5)
        d.tick(float(t))
        assert not state_errors(st, pol), (t, state_errors(st, pol))  # was GPU 0 shared by V and q at 9 s
    ((t_stop, acts),) = [(t, acts) for t, acts in chk.lists if "x0" in A.stopping(acts)]
    assert [(a.model, a.gpus) for a in acts if type(a) is A.StartInstance] == [("V", (0,))], (t_stop, acts)
    assert not chk.errors, chk.errors


def _live(st, m):
    return [i for i in st.instances.values() if i.model == m and not i.draining]


# ---- random scenarios ------------------------------------------------------------------------------------------


def _scenario(seed: int, colocate: bool = False):
    """A small cluster, more light models than it has GPUs for one each, loads that burst, go quiet and come back;
    a config drawn from the co-serving switches. ``colocate``: the first tick lays out the colocation
    (``colocate_when_oversubscribed``) and the rules stand aside; off, the rules decide from the first tick."""
    rng = random.Random(seed)
    n7, n13 = rng.randint(3, 7), rng.randint(0, 2)
    models = [ModelInfo(f"s{k}", 13_500_000_000, 1, 524_288, 0.035, rng.choice((0.015, 0.03))) for k in range(n7)]
    models += [_13b(f"m{k}") for k in range(n13)]
    st = ClusterState.uniform(rng.choice((1, 2)), models, gpus_per_server=rng.choice((2, 4)), gpu_bytes=72 * GiB)
    cfg = PolicyConfig(
        replan_s=rng.choice((1e9, 7.0)), window_s=rng.choice((1e6, 60.0)), load_window_s=rng.choice((3.0, 5.0)),
        min_lifetime_s=rng.choice((2.0, 5.0)), instance_capacity=rng.choice((8, 32)),
        coserve_always=rng.random() < 0.5, consolidate=rng.random() < 0.5, idle_to_zero=rng.random() < 0.5,
        migrate_max_in_flight=rng.choice((0, 4)), preempt_after_s=rng.choice((6.0, 30.0)),
        coserve_max_models=rng.choice((2, 4)), coserve_tpot_s=rng.choice((0.05, 0.1)),
        colocate_when_oversubscribed=colocate)
    pol = make_policy("warmserve", models=models, config=cfg)
    start_ready = rng.random() < 0.5
    return rng, models, st, pol, instant_driver(pol, st, start_ready=start_ready), start_ready


def _drive(seed: int, ticks: int = 80, steps: int = 10, colocate: bool = False,
           lose_at: int | None = None) -> tuple[list[str], int]:
    """Runs one random scenario, ``steps`` rounds of events between ticks (arrivals, finishes, instances that
    become ready); returns what was wrong and how many actions were checked (with ``lose_at``, in the ticks from
    then on). ``lose_at``: before that tick the lowest GPU that carries an instance is lost (a colocation standing
    then is given up to the rules)."""
    rng, models, st, pol, d, start_ready = _scenario(seed, colocate)
    chk = Checked(pol)
    if colocate:  # laid out only on an empty cluster: the first tick before any request
        d.tick(0.0)
    ex = d.executor
    rate = {m.name: rng.choice((0.0, 0.5, 2.0)) for m in models}  # requests per second
    errors: list[str] = []
    n_req = 0
    for t in range(1, ticks + 1):
        if t == lose_at:
            busy = sorted(st.busy_gpus())
            if busy:
                d.lose_gpus((busy[0],), t - 1.0)
        for m in rate:  # a phase change now and then: idle, a trickle, a burst
            if rng.random() < 0.06:
                rate[m] = rng.choice((0.0, 0.0, 0.5, 2.0, 8.0, 30.0))
        for k in range(steps):
            now = t - 1 + (k + 1) / (steps + 1)
            for m, r in rate.items():
                for _ in range(int(r / steps) + (rng.random() < r / steps % 1)):
                    n_req += 1
                    d.submit(m, f"r{n_req}", now)
            for iid in sorted(ex.running):  # each instance ends a request now and then (about 3 per second)
                reqs = ex.running.get(iid)
                if reqs and iid in st.instances and rng.random() < 0.3:
                    d.request_finished(st.instances[iid].model, iid, now, request=reqs.pop(0))
            if not start_ready:
                starting = [i.instance_id for i in st.instances.values() if not i.ready]
                if starting and rng.random() < 0.2:
                    d.instance_ready(rng.choice(starting), now)
            errors += [f"t={now:.2f}: {e}" for e in state_errors(st, pol)]
        d.tick(float(t))
        errors += [f"t={t} after the tick: {e}" for e in state_errors(st, pol)]
    return chk.errors + errors, sum(len(acts) for t, acts in chk.lists if lose_at is None or t >= lose_at)


@pytest.mark.parametrize("seed", sorted(set(range(20)) | {27, 110}))
def test_random_ticks_keep_the_plan_invariants(seed):
    errors, n_actions = _drive(seed)
    assert n_actions > 0
    assert not errors, errors[:10]


@pytest.mark.parametrize("seed", [0, 3, 5, 6])  # seeds whose cluster is over-subscribed and holds a colocation
def test_random_ticks_keep_the_plan_invariants_with_the_colocation(seed):
    errors, n_actions = _drive(seed, colocate=True)
    assert n_actions > 0
    assert not errors, errors[:10]
    rng, models, st, pol, d, start_ready = _scenario(seed, True)
    d.tick(0.0)
    assert pol._colocated  # laid out (the drive above starts the same way)


@pytest.mark.parametrize("seed", [0, 3, 5, 6])
def test_random_ticks_keep_the_plan_invariants_once_the_colocation_is_given_up(seed):
    """The same drives with a GPU lost for good a third of the way in: the colocation is given up, its instances become
    co-served hosts to the rules, and the rules' moves from there keep every invariant (the drives above never
    leave the colocation)."""
    errors, n_actions = _drive(seed, colocate=True, lose_at=27)
    assert n_actions > 0  # the rules acted after the loss
    assert not errors, errors[:10]
    rng, models, st, pol, d, start_ready = _scenario(seed, True)
    d.tick(0.0)
    assert pol._pinned  # it stands before the loss
    d.lose_gpus((sorted(st.busy_gpus())[0],), 1.0)
    d.tick(2.0)
    assert pol._pinned  # it waits for the GPU to come back (its worker started again)
    d.tick(2.0 + RELAY_WAIT_S)
    assert pol._pinned == {} and pol._colocated  # given up once it stays gone; its instances stay known


_RULES = {"colocate_when_oversubscribed": False}


@pytest.mark.parametrize("cfg,servers", [(_RULES, 1), ({**_RULES, "consolidate": True, "idle_to_zero": True}, 1),
                                         ({**_RULES, "coserve_always": True, "min_lifetime_s": 2.0}, 1), ({}, 2)],
                         ids=["over", "consolidate", "always", "colocation"])
def test_a_simulated_workload_keeps_the_plan_invariants(cfg, servers):
    """The simulator's paper recipe, 12 models on 8 GPUs at twice its rate for 5 minutes (over-subscribed: light
    models co-serve by the rules), or on 16 GPUs in the first tick's colocation (on 8 no colocation holds the two
    70Bs beside the 13Bs), every tick's list and the state after it checked."""
    sim_cfg = SimConfig(n_servers=servers, gpus_per_server=8, policy_config=PolicyConfig(**cfg), drain_s=30.0,
                        warmup_s=0.0)
    preset = scale_preset(8 * servers, 12, duration_s=300.0, recipe="paper", config=sim_cfg)
    sim = Simulator(preset.build(2.0, 0), preset.models, "warmserve", config=sim_cfg)
    chk = Checked(sim.policy)
    errors, co_starts = [], []
    tick, start = sim.driver.tick, sim.start_instance

    def checked_tick(now_s):
        tick(now_s)
        errors.extend(f"t={now_s}: {e}" for e in state_errors(sim.state, sim.policy))

    def counted_start(inst, act, prewarm, now_s):
        if act.kv_fraction < 1:
            co_starts.append(act.instance_id)
        return start(inst, act, prewarm, now_s)

    sim.driver.tick, sim.start_instance = checked_tick, counted_start
    sim.run()
    assert co_starts  # it co-served
    assert bool(sim.policy._colocated) == (servers == 2)
    assert not chk.errors + errors, (chk.errors + errors)[:10]
