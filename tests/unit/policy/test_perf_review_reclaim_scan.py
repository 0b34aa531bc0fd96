"""``arbitration.reclaim_victims`` / ``preemption_victims`` with the groups kept between the wanting models of
one tick's step 4 (``GroupScans`` on the board, as ``Policy._autoscale`` sets it) against the functions as they
were before (a fresh per-GPU map and group check on every call), on random clusters: mixed GPU sizes, tp 1-4,
co-served GPUs, starting, draining and young instances, reserved GPUs. Between calls, as step 4 does: victims
stop (their GPUs free on the board when nothing is in flight), others start on the board, other models' stops
join ``stopping``, co-served instances join hosts (a count on the board, nothing stops). Every answer (share or
harm, victims, group) must be the same; each key of the kept scans (``stopping``, the board's counts, the scan
itself) left out fails some of these cases."""

import random

import pytest

# _occupancy is unchanged (relocations uses it), so the old functions below call it as they did
from warmserve.policy.arbitration import GroupScans, _occupancy, preemption_victims, reclaim_victims
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, InstanceState, ModelInfo

GiB = 1 << 30


# ---- the functions as they were (arbitration.py before GroupScans) --------------------------------------------

def _group_victims(board, group, on_gpu, model, now_s, served_s):
    m = board.models[model]
    victims = {}
    for g in group:
        loc = board.local[g]
        if board.total[loc] < m.shard_bytes + m.kv_block_bytes:
            return []
        here = on_gpu.get(g, ())
        if board.inst_count[loc] != len(here):
            return []
        for inst in here:
            if inst.model == model or not inst.ready or inst.draining or now_s - inst.ready_s < served_s:
                return []
            victims[inst.instance_id] = inst
    return [victims[i] for i in sorted(victims)]


def _share(instances, demand):
    return instances / demand if demand > 0 else float("inf")


def _old_reclaim(state, board, model, now_s, have, demand, stopping, served_s, reserved, band, floor=0.0,
                 starved=False):
    tp = state.models[model].tp
    gain = (have[model] + 1) / demand[model]
    now = band * have[model] / demand[model]
    on_gpu, ready = _occupancy(state, stopping, lambda inst: inst.ready and not inst.draining)
    best = None
    for srv in state.servers:
        gpus = list(srv.gpu_ids)
        for start in range(0, len(gpus) - tp + 1, tp):
            group = gpus[start:start + tp]
            if reserved.intersection(group):
                continue
            victims = _group_victims(board, group, on_gpu, model, now_s, served_s)
            if not victims:
                continue
            lost = {}
            for v in victims:
                lost[v.model] = lost.get(v.model, 0) + 1
            after = min(_share(have[m] - n, demand[m]) for m, n in lost.items())
            if (not starved and (after < max(gain, floor) or any(_share(have[m], demand[m]) < now for m in lost))
                    or any(ready.get(m, 0) - n < 1 for m, n in lost.items())):
                continue
            key = (-after, len(victims), sum(v.in_flight for v in victims), srv.server_id, start)
            if best is None or key < best[0]:
                best = (key, victims, tuple(group))
    return None if best is None else (-best[0][0], best[1], best[2])


def _old_preempt(state, board, model, now_s, load, stopping, served_s, reserved=frozenset(), keep_last=None):
    tp = state.models[model].tp
    on_gpu, count = _occupancy(state, stopping, lambda inst: not inst.draining)
    best = None
    for srv in state.servers:
        gpus = list(srv.gpu_ids)
        for start in range(0, len(gpus) - tp + 1, tp):
            if reserved.intersection(gpus[start:start + tp]):
                continue
            victims = _group_victims(board, gpus[start:start + tp], on_gpu, model, now_s, served_s)
            if not victims:
                continue
            lost = {}
            for v in victims:
                lost[v.model] = lost.get(v.model, 0) + 1
            if keep_last is not None and any(n >= count[m] and m in keep_last for m, n in lost.items()):
                continue
            harm = sum(load[m] / count[m] * n * (2.0 if n >= count[m] else 1.0) for m, n in lost.items())
            key = (harm, srv.server_id, start)
            if best is None or key < best[0]:
                best = (key, victims, tuple(gpus[start:start + tp]))
    return None if best is None else (best[0][0], best[1], best[2])


# ---- random clusters ------------------------------------------------------------------------------------------

def _cluster(rng):
    models = [ModelInfo(f"m{k:02d}", rng.choice((6, 13, 26, 70)) * GiB, rng.choice((1, 1, 1, 2, 2, 4)), 1 << 19)
              for k in range(rng.randint(2, 12))]
    st = ClusterState.uniform(rng.randint(1, 3), models, gpus_per_server=rng.choice((4, 8)), gpu_bytes=80 * GiB)
    for gpu in st.gpus:
        gpu.total_bytes = rng.choice((80, 80, 80, 24)) * GiB  # small GPUs: some models fit no group there
    n = 0
    for srv in st.servers:
        for k in range(len(srv.gpu_ids)):
            for _ in range(rng.choice((0, 1, 1, 1, 2))):  # two: a co-served GPU
                m = rng.choice(models)
                start = k - k % m.tp
                if start + m.tp > len(srv.gpu_ids):
                    continue
                iid = f"i{n:03d}"
                n += 1
                st.instances[iid] = InstanceState(
                    iid, m.name, srv.gpu_ids[start:start + m.tp], created_s=0.0,
                    ready_s=rng.choice((None, 0.0, 10.0, 50.0, 90.0)), in_flight=rng.choice((0, 0, 1, 3, 8)),
                    draining=rng.random() < 0.15)
    return st


def _step4(seed, cached):
    """Step 4 as the policy runs it: the wanting models in turn, reclaim then time-sharing, the victims stopped
    and their group reserved, sometimes a start; returns every answer, as (share or harm, victim ids, group)."""
    rng = random.Random(seed)
    st = _cluster(rng)
    board = Board(st)
    if cached:
        board.group_scans = GroupScans(st)
    names = sorted(st.models)
    have = {m: sum(1 for i in st.instances.values() if i.model == m and not i.draining) for m in names}
    demand = {m: rng.choice((0.0, 0.5, 1.0, 2.5, 4.0, 9.0)) for m in names}
    load = {m: rng.choice((0.0, 1.0, 3.0, 12.0)) for m in names}
    stopping, reserved, got_all = set(), set(), []
    reclaim = reclaim_victims if cached is not None else _old_reclaim
    preempt = preemption_victims if cached is not None else _old_preempt
    for _ in range(rng.randint(4, 20)):
        m = rng.choice(names)
        demand[m] = demand[m] or 1.0  # a wanting model asks for something
        if rng.random() < 0.6:
            got = reclaim(st, board, m, 100.0, have, demand, set(stopping), 30.0, reserved, 1.6,
                          floor=rng.choice((0.0, 0.8)), starved=rng.random() < 0.2)
        else:
            got = preempt(st, board, m, 100.0, load, set(stopping), rng.choice((30.0, 60.0)), reserved,
                          keep_last=rng.choice((None, set(rng.sample(names, 2)))))
        got_all.append(None if got is None else (got[0], [v.instance_id for v in got[1]], got[2]))
        if got is not None:
            for v in got[1]:
                stopping.add(v.instance_id)
                have[v.model] -= 1
                if v.in_flight == 0:
                    board.stop_instance(v.gpus)
            reserved |= set(got[2])
        if rng.random() < 0.3:  # another model's scale-in or migration this tick: in ``stopping``, GPUs freed
            other = rng.choice(sorted(st.instances))
            if other not in stopping:
                stopping.add(other)
                board.stop_instance(st.instances[other].gpus)
        if rng.random() < 0.3:  # a start on the board (the state knows nothing of it this tick)
            board.choose_for_instance(rng.choice(names))
        if rng.random() < 0.3:  # a co-served start joins a host (``CoServing.join``): only the count changes
            inst = st.instances[rng.choice(sorted(st.instances))]
            for g in inst.gpus:
                board.inst_count[board.local[g]] += 1
    return got_all


@pytest.mark.parametrize("seed", range(150))
def test_kept_groups_give_the_answers_of_a_fresh_scan_on_every_call(seed):
    before = _step4(seed, None)
    assert _step4(seed, True) == before
    assert _step4(seed, False) == before


def test_the_cases_reach_both_rules_answers():
    """The random cases above find victims (and find none) for both rules: not a comparison of Nones only."""
    answers = [a for seed in range(150) for a in _step4(seed, True)]
    found = [a for a in answers if a is not None]
    assert len(found) > 100 and len(answers) - len(found) > 100
    assert any(len(a[1]) > 1 for a in found) and any(isinstance(a[0], float) and a[0] > 0 for a in found)


def test_a_scan_kept_for_another_state_is_not_used():
    """A board whose GroupScans were made for another state (a caller's mistake) scans afresh."""
    rng = random.Random(7)
    st = _cluster(rng)
    board = Board(st)
    board.group_scans = GroupScans(ClusterState.uniform(1, list(st.models.values())))
    m = sorted(st.models)[0]
    have = {n: 1 for n in st.models}
    demand = {n: 1.0 for n in st.models}
    fresh = _old_preempt(st, board, m, 100.0, {n: 1.0 for n in st.models}, set(), 0.0)
    got = preemption_victims(st, board, m, 100.0, {n: 1.0 for n in st.models}, set(), 0.0)
    assert (got is None) == (fresh is None) and (got is None or (got[0], got[1], got[2]) == fresh)
    assert reclaim_victims(st, board, m, 100.0, have, demand, set(), 0.0, set(), 1.6, starved=True) == \
        _old_reclaim(st, board, m, 100.0, have, demand, set(), 0.0, set(), 1.6, starved=True)
