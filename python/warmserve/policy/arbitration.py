"""Taking GPUs from other models when a model's demand cannot be met from free GPUs. Two rules, both choosing
an aligned group of tp GPUs on one server (the groups instances are placed on); the policy
(``core.Policy._reclaim_for`` / ``_preempt_for``) stops the chosen instances and keeps the freed GPUs for the
model that wanted them:

- reclaim (``reclaim_victims``): from instances that are not their model's last ready one, when their models
  stay at least as well served as the wanting model will be (any model short of instances, in order of
  deficit);
- time-sharing (``preemption_victims``): a model that waits with no instance may take even a last instance,
  once it has served ``preempt_after_s`` and the waiting model's load clearly exceeds the harm; so may a model
  that outgrew its co-serving host (``coserve``), but not the last instance of a model no host could take.

A third rule moves instances without stopping any model: ``relocations`` (defragmenting) moves light instances
so that a serving tensor-parallel model finds a whole group of idle GPUs on one server for its next scale-out.
A fourth moves requests: ``migrations`` picks draining instances whose few requests their model's other
instances can take, so that their GPUs are free at once for a model that wants them."""

from __future__ import annotations

import heapq
import math

import numpy as np

from warmserve.policy.gpu_masks import FITS_ANY, GROUPS, group_fits
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, InstanceState

#: A model with no instance takes GPUs from others only when its load (in-flight + queued, 5 s average, weighed by
#: its wait: ``moves._preempt_for``) is more than this many times the harm of stopping their instances (see
#: ``preemption_victims``). Above 1 so that two models of equal load do not swap GPUs back and forth at once (they
#: time-share, a turn of about 4 x preempt_after_s each); 2: the GPUs go at once to a model that needs them clearly
#: more.
PREEMPT_LOAD_RATIO = 2.0


def _occupancy(state: ClusterState, stopping: set[str], counted) -> tuple[dict[int, list[InstanceState]],
                                                                          dict[str, int]]:
    """The instances on each GPU, and per model how many pass ``counted``, leaving out those in ``stopping``."""
    on_gpu: dict[int, list[InstanceState]] = {}
    count: dict[str, int] = {}
    for inst in state.instances.values():
        if inst.instance_id in stopping:
            continue
        for g in inst.gpus:
            on_gpu.setdefault(g, []).append(inst)
        if counted(inst):
            count[inst.model] = count.get(inst.model, 0) + 1
    return on_gpu, count


def freed_groups(state: ClusterState, board: Board, gpus, tps):
    """The aligned groups of one of ``tps`` (GPU ids, on one server) that freeing ``gpus`` completes, each once:
    it holds some of them and its other GPUs are idle on ``board``. Lazily, servers in order, then tp, then GPU."""
    mine = set(gpus)
    for srv in state.servers:
        ids = list(srv.gpu_ids)
        for tp in sorted(set(tps)):
            for start in range(0, len(ids) - tp + 1, tp):
                group = ids[start:start + tp]
                if mine.intersection(group) and all(
                        g in mine or (g in board.local and not board.busy[board.local[g]]) for g in group):
                    yield tuple(group)


def freed_group(state: ClusterState, board: Board, gpus, tps) -> tuple[int, ...] | None:
    """The first of ``freed_groups``; None when there is none."""
    return next(freed_groups(state, board, gpus, tps), None)


def migrations(state: ClusterState, stopping: set[str], capacity: int, max_in_flight: int,
               skip=frozenset()) -> list[InstanceState]:
    """Instances that drain (or stop in ``stopping``) with 1 to ``max_in_flight`` requests in flight, which the
    model's ready instances that stay take within ``capacity`` requests each (the policy passes B, or
    route_cap_per_instance when lower: what route() gives them); fewest in flight first.
    Moving their requests (``actions.Migrate``) frees their GPUs now rather than when the longest generation
    on them ends. Left out: instances in ``skip`` and those sharing a GPU with another instance (moving them
    frees no GPU)."""
    room: dict[str, int] = {}
    on_gpu: dict[int, int] = {}
    for inst in state.instances.values():
        for g in inst.gpus:
            on_gpu[g] = on_gpu.get(g, 0) + 1
        if inst.ready and not inst.draining and inst.instance_id not in stopping:
            room[inst.model] = room.get(inst.model, 0) + max(0, capacity - inst.in_flight)
    out = []
    for inst in sorted(state.instances.values(), key=lambda i: (i.in_flight, i.instance_id)):
        if (not (inst.draining or inst.instance_id in stopping) or not inst.ready or inst.instance_id in skip
                or not 0 < inst.in_flight <= max_in_flight or any(on_gpu[g] > 1 for g in inst.gpus)
                or room.get(inst.model, 0) < inst.in_flight):
            continue
        room[inst.model] -= inst.in_flight
        out.append(inst)
    return out


def migration_plan(state: ClusterState, board: Board, stopping: set[str], capacity: int, max_in_flight: int,
                   tps, need: int, skip=frozenset()) -> list[InstanceState]:
    """The draining instances to move requests off (``migrations``' candidates, fewest in flight first): those
    whose GPUs complete an aligned group of one of ``tps`` (the wanting models' degrees) with idle GPUs or with
    other candidates on their server, up to ``need`` groups. Their GPUs are freed on ``board``."""
    pending: dict[int, list[InstanceState]] = {}  # server -> candidates that complete no group yet
    out = []
    for inst in migrations(state, stopping, capacity, max_in_flight, skip):
        if need <= 0:
            break
        waiting = pending.setdefault(state.gpus[inst.gpus[0]].server_id, [])
        waiting.append(inst)
        group = freed_group(state, board, [g for w in waiting for g in w.gpus], tps)
        if group is None:
            continue
        for moved in [w for w in waiting if set(w.gpus) & set(group)]:
            waiting.remove(moved)
            board.stop_instance(moved.gpus)
            out.append(moved)
        need -= 1
    return out


def preemption_victims(state: ClusterState, board: Board, model: str, now_s: float, load: dict[str, float],
                       stopping: set[str], served_s: float, reserved: set[int] = frozenset(),
                       keep_last=None) -> tuple[float, list[InstanceState], tuple[int, ...]] | None:
    """(harm, instances, group) of the aligned group of tp GPUs on one server that ``model`` could take at least
    harm, or None. ``group``: all its GPU ids, idle ones included (the policy keeps every one of them for
    ``model``: found in review, reserving only the victims' GPUs let another model start on the group's idle GPU
    and be preempted in turn). A group qualifies when each of its GPUs is idle or held only by other models'
    instances that are ready, not draining and have served ``served_s`` since they became ready, and holds at
    least one of them.
    Harm: each instance's share of its model's ``load`` (load / the model's instances), doubled for a model's
    last instance (its requests wait for a start instead of moving to a sibling). ``stopping``: instances
    stopped earlier in the same decision (the board has freed their GPUs already, or they drain); a GPU where
    the board holds something the state does not (an instance started this round) does not qualify, nor does a
    group with a GPU in ``reserved`` (freed for another model: found in review, a 70B held three GPUs of a
    four-GPU group reserved while a 13B took the fourth for a group whose other GPU was among the three, and
    neither could ever start: every request of every model waited to the end).
    ``keep_last``: models (a set) whose last instance is not taken (None: any model's may be)."""
    tp = state.models[model].tp
    need = board.models[model].shard_bytes + board.models[model].kv_block_bytes
    groups, _, count = group_scan(state, board, tp, stopping, now_s, served_s)
    best = None
    for server_id, start, group, victims, lost, _, least_bytes in groups:
        if reserved.intersection(group) or least_bytes < need or model in lost:
            continue
        if keep_last is not None and any(n >= count[m] and m in keep_last for m, n in lost.items()):
            continue
        harm = sum(load[m] / count[m] * n * (2.0 if n >= count[m] else 1.0) for m, n in lost.items())
        key = (harm, server_id, start)
        if best is None or key < best[0]:
            best = (key, victims, group)
    return None if best is None else (best[0][0], list(best[1]), best[2])


class GroupScans:
    """``group_scan``'s results kept for the reclaims and time-sharing of one tick's step 4 (``Policy._autoscale``
    sets one on its board for that loop): each wanted model's ``reclaim_victims`` / ``preemption_victims`` rebuilt
    the same per-GPU map and checked the same groups, about 40% of ``simulate --preset paper-conv --models 200``
    (py-spy, 2026-12-07). A result is reused while its key holds: the same ``state`` (the driver does not change it
    during a tick), tp, now_s, served_s, ``stopping``, and the board's instance count per GPU (every start and stop
    the board sees changes it; the board's GPU sizes never change)."""

    def __init__(self, state: ClusterState):
        self.state = state
        self._kept: dict[tuple, tuple] = {}

    def get(self, board: Board, tp: int, stopping: set[str], now_s: float, served_s: float) -> tuple:
        key = (tp, now_s, served_s)
        check = (frozenset(stopping), board.inst_count.tobytes())
        kept = self._kept.get(key)
        if kept is None or kept[0] != check:
            kept = self._kept[key] = (check, _scan(self.state, board, tp, stopping, now_s, served_s))
        return kept[1]


def group_scan(state: ClusterState, board: Board, tp: int, stopping: set[str], now_s: float,
               served_s: float) -> tuple[list[tuple], dict[str, int], dict[str, int]]:
    """``_scan``, from the board's ``group_scans`` when it has one for ``state``."""
    scans = board.group_scans
    if scans is None or scans.state is not state:
        return _scan(state, board, tp, stopping, now_s, served_s)
    return scans.get(board, tp, stopping, now_s, served_s)


def _scan(state: ClusterState, board: Board, tp: int, stopping: set[str], now_s: float,
          served_s: float) -> tuple[list[tuple], dict[str, int], dict[str, int]]:
    """(groups, ready, active), leaving out the instances in ``stopping``. ``groups``: the aligned groups of tp
    GPUs on one server (servers in order, then GPU) that some model could take, each as (server id, start, GPU
    ids, instances to stop in id order, per model how many of them, their requests in flight, the least total
    bytes of its GPUs): a group qualifies for a model when its GPUs hold at least one instance, every instance on
    them is of another model, ready, not draining and ready for ``served_s``, the board counts on each GPU just
    the instances the state has there (else an instance started, or stopped with requests, this round), and each
    GPU holds the model's shard and one KV block (found in review: with mixed GPU sizes a group the model could
    never start on was taken, and its idle GPUs held reserved for good). ``ready`` / ``active``: per model its
    instances ready and not draining / not draining."""
    on_gpu: dict[int, list[InstanceState]] = {}
    ready: dict[str, int] = {}
    active: dict[str, int] = {}
    for inst in state.instances.values():
        if inst.instance_id in stopping:
            continue
        for g in inst.gpus:
            on_gpu.setdefault(g, []).append(inst)
        if not inst.draining:
            active[inst.model] = active.get(inst.model, 0) + 1
            if inst.ready:
                ready[inst.model] = ready.get(inst.model, 0) + 1
    groups = []
    for srv in state.servers:
        gpus = list(srv.gpu_ids)
        for start in range(0, len(gpus) - tp + 1, tp):  # aligned groups: they leave whole blocks behind
            group = tuple(gpus[start:start + tp])
            victims = _group_victims(board, group, on_gpu, now_s, served_s)
            if not victims:
                continue
            lost: dict[str, int] = {}
            for v in victims:
                lost[v.model] = lost.get(v.model, 0) + 1
            groups.append((srv.server_id, start, group, victims, lost, sum(v.in_flight for v in victims),
                           min(int(board.total[board.local[g]]) for g in group)))
    return groups, ready, active


def _group_victims(board: Board, group, on_gpu: dict, now_s: float, served_s: float) -> list[InstanceState]:
    """The instances on ``group``, in id order, when each may be stopped (``_scan``); else empty."""
    victims: dict[str, InstanceState] = {}
    for g in group:
        here = on_gpu.get(g, ())
        if board.inst_count[board.local[g]] != len(here):
            return []
        for inst in here:
            if not inst.ready or inst.draining or now_s - inst.ready_s < served_s:
                return []
            victims[inst.instance_id] = inst
    return [victims[i] for i in sorted(victims)]


def reclaim_victims(state: ClusterState, board: Board, model: str, now_s: float, have: dict[str, int],
                    demand: dict[str, float], stopping: set[str], served_s: float, reserved: set[int],
                    band: float, floor: float = 0.0,
                    starved: bool = False) -> tuple[float, list[InstanceState], tuple[int, ...]] | None:
    """(share met after, instances, group) of the aligned group of tp GPUs on one server whose instances
    ``model``, short of instances, may take; None when no group qualifies. ``group``: all its GPU ids, idle ones
    included (as in ``preemption_victims``). The rule (GPUs arbitrated by unmet demand):

    - ``demand[m]``: the instances m's load asks for (``Policy._wanted``'s scale-out figure, unrounded: in-flight
      plus queued load over 0.8 x B, or its prefill backlog over 0.8 x its per-instance budget); ``have[m]``:
      its instances (starting or serving, not draining) after this decision so far. have / demand is the share
      of m's demand that is met; the scale-out fires for a model whose share is below 1.
    - A group qualifies when each of its GPUs is idle or held only by instances of other models that are ready,
      not draining, not in ``stopping`` and ready for ``served_s`` (the §5 minimum lifetime), none of its GPUs
      is in ``reserved`` (freed for another model), and it holds at least one instance. Per model v losing k
      instances there: v keeps at least one ready instance (a last instance is the time-sharing rule's, with its
      own wait and load test); v's share now, have[v] / demand[v], is at least ``band`` times ``model``'s,
      have[model] / demand[model] (a clear imbalance, below); and v's share after the loss,
      (have[v] - k) / demand[v], is at least ``model``'s after its gain, (have[model] + 1) / demand[model] (the
      move never turns the order of the two around, so under unchanged load the reverse move never qualifies).
    - ``band``: the policy passes scale_out_threshold / scale_in_threshold (0.8 / 0.5 = 1.6), the §5 band that
      keeps one model from flapping between n and n + 1 instances (one is added above 0.8 x B per instance,
      removed below 0.5 x B: nothing happens while its share of demand met is between 1 and 1.6). Between two
      models it reads: GPUs move only while one's load per instance, relative to its capacity, is more than
      0.8 / 0.5 times the other's. With few instances the order condition is the stricter one (1 -> 2 against
      2 -> 1 needs a 4x imbalance); with many it is not (11 against 10 instances passes it at an imbalance of
      one instance in ten), and the band keeps such models from swapping GPUs on every fluctuation of their 5 s
      loads. Loads are in-flight counts, which grow when a model loses capacity (its requests take longer), so
      GPUs still move back when a victim's load rises afterwards: each move waits for its victims to drain and
      for the §5 minimum lifetime.
    - Among qualifying groups: the highest lowest share after the loss (the loss that hurts least), then the
      fewest instances stopped, then the fewest requests in flight on them (they drain sooner), then the
      lowest server and GPU.
    - ``floor``: the victims' models keep at least this share of their demand met after the loss (the policy
      passes ``PolicyConfig.reclaim_floor_share``, 0.8: their remaining instances carry at most B requests
      each). Without it, when several models are short at once the order condition alone let them pass GPUs
      back and forth: a model that lost an instance takes longer per request, its in-flight demand grows, and it
      takes GPUs back (seed 0, 40 simulated minutes: artifact-conv at 2x rate 43 moves, most between its two
      7Bs; artifact-code at 4x 137 moves, SLO attainment 0.48 against 0.67 with no reclaim at all).
    - ``starved``: ``model`` has no instance (``PolicyConfig.reclaim_for_starved``): neither share test applies
      (max-min: its share, 0, is the least met; no reclaim takes its one instance back)."""
    tp = state.models[model].tp
    gain = (have[model] + 1) / demand[model]
    now = band * have[model] / demand[model]
    need = board.models[model].shard_bytes + board.models[model].kv_block_bytes
    groups, ready, _ = group_scan(state, board, tp, stopping, now_s, served_s)
    best = None
    for server_id, start, group, victims, lost, in_flight, least_bytes in groups:
        if reserved.intersection(group) or least_bytes < need or model in lost:
            continue
        after = min(_share(have[m] - n, demand[m]) for m, n in lost.items())
        if (not starved and (after < max(gain, floor) or any(_share(have[m], demand[m]) < now for m in lost))
                or any(ready.get(m, 0) - n < 1 for m, n in lost.items())):
            continue
        key = (-after, len(victims), in_flight, server_id, start)
        if best is None or key < best[0]:
            best = (key, victims, group)
    return None if best is None else (-best[0][0], list(best[1]), best[2])


def least_met_first(have: dict[str, int], want: dict[str, float], starved_since: dict[str, float], start,
                    out: list) -> set[str]:
    """Start instances one at a time (``start(model)``: its action, or None when no GPUs fit it), each to the model
    whose demand is least met (have / want; ties: the longest starved, then the most wanted, then the name),
    appending each action to ``out`` and counting it in ``have``; returns the models left short because no GPUs
    fit them. Only the chosen model's key changes between starts (``start`` reads neither ``have`` nor
    ``starved_since``), so a heap gives the order of a min() over the short models before each start; that
    rescan was O(models^2) a tick: 14% of the paper-conv run with 200 models (py-spy, 2026-12-07)."""
    def key(m: str) -> tuple:
        return have[m] / want[m], starved_since.get(m, math.inf), -want[m], m

    heap = [key(m) for m in want if want[m] > have[m]]
    heapq.heapify(heap)
    wanted = set()
    while heap:
        m = heapq.heappop(heap)[-1]
        act = start(m)
        if act is None:
            wanted.add(m)
            continue
        out.append(act)
        have[m] += 1
        if have[m] < want[m]:
            heapq.heappush(heap, key(m))
    return wanted


def _share(instances: int, demand: float) -> float:
    """Share of a demand (instances) that ``instances`` meet; a model that asks for nothing is fully served."""
    return instances / demand if demand > 0 else float("inf")


def relocations(state: ClusterState, board: Board, now_s: float, served_s: float, stopping: set[str],
                reserved: set[int],
                over_prewarms: bool = False) -> tuple[str, int, int, list[InstanceState], dict[str, np.ndarray]] | None:
    """(model, server, GPU mask, instances, off-limits): move these instances elsewhere so that ``model`` (tp >= 2,
    with an instance now) finds the tp GPUs of the mask on ``server`` idle for its next scale-out; None when it has
    them already, or when no move qualifies. Why: with light instances spread over both servers, the idle GPUs of a
    cluster are often enough for one more tensor-parallel instance but split between servers (paper-code at 9.9
    rps, seed 0: at t = 45-48 s the 70B's prefill backlog passed its budget with GPUs 2, 8, 9 and 15 idle, and it
    could start a second instance only at 49 s, by reclaiming five light instances; 116 of its 128 misses came
    from that burst).

    A move qualifies when every instance on the GPUs to clear is of a model of smaller tp, ready for ``served_s``
    (the §5 minimum lifetime), not draining or in ``stopping``, alone on its GPUs, and all of them fit on idle
    GPUs elsewhere (off ``reserved``, off the cleared ones, off other models' prewarms; with ``over_prewarms``,
    prewarms that score below ``model``'s best replica and ``model``'s own replicas do not count). The policy
    starts each moved instance's replacement first (off those prewarms) and stops the old one only once the new
    one serves, so no model loses capacity and no prewarm that counts is evicted. Among qualifying moves: the
    fewest instances moved, then the fewest requests in flight on them, then the server holding the model's loaded
    prewarm (its start there is a hit), then the lowest server. One model per call (a tick). Off-limits: per
    victim model, the prewarms the moves were checked against (``others_prewarms``), for the starts to avoid: taken
    before any start evicts a replica of ``model`` and so lowers its best score."""
    idle = Board._pack(~board.busy)
    for g in reserved:
        loc = board.local.get(g)  # None: a lost GPU
        if loc is not None:
            idle[loc[0]] &= ~(1 << loc[1])
    on_gpu, _ = _occupancy(state, stopping, lambda inst: True)
    active = {i.model for i in state.instances.values() if not i.draining}
    for model in sorted(active, key=lambda m: (-state.models[m].tp, m)):
        tp = state.models[model].tp
        gm = GROUPS[tp]
        if tp < 2 or any(FITS_ANY[tp][m] for m in idle.tolist()) or sum(
                bin(int(x)).count("1") for x in idle) < tp:
            continue
        hit_servers = {r.server for srv in board.by_server for r in srv.values() if r.model == model and r.loaded}
        others: dict[str, np.ndarray] = {}  # others_prewarms per victim model, computed once per call
        clearing_for, top = (model, best_score(board, model)) if over_prewarms else (None, -np.inf)
        best = None
        for s in range(board.n_servers):
            for mask in gm.tolist():
                victims = _to_move(state, board, s, mask & ~int(idle[s]), on_gpu, tp, now_s, served_s)
                if victims is None or not _fits_elsewhere(board, idle, s, mask, victims, others, clearing_for, top):
                    continue
                key = (len(victims), sum(v.in_flight for v in victims), s not in hit_servers, s, mask)
                if best is None or key < best[0]:
                    best = (key, victims)
        if best is not None:
            return model, best[0][3], best[0][4], best[1], {v.model: others[v.model] for v in best[1]}
    return None


def _to_move(state: ClusterState, board: Board, server: int, busy_mask: int, on_gpu: dict, tp: int,
             now_s: float, served_s: float) -> list[InstanceState] | None:
    """The instances on ``busy_mask`` of ``server``, in id order, when each may move (``relocations``)."""
    victims: dict[str, InstanceState] = {}
    for k in range(len(board.gpu_ids[server])):
        if not busy_mask >> k & 1:
            continue
        g = int(board.gpu_ids[server, k])
        here = on_gpu.get(g, ())
        if len(here) != 1 or board.inst_count[server, k] != 1:
            return None  # co-served GPUs, or an instance started or stopped this round
        inst = here[0]
        if (state.models[inst.model].tp >= tp or not inst.ready or inst.draining
                or now_s - inst.ready_s < served_s):
            return None
        victims[inst.instance_id] = inst
    return [victims[i] for i in sorted(victims)] or None


def best_score(board: Board, model: str) -> float:
    """The highest score among ``model``'s prewarmed replicas (0 with none)."""
    return max((r.score for rs in board.by_server for r in rs.values() if r.model == model), default=0.0)


def others_prewarms(board: Board, model: str, clearing_for: str | None = None, top: float = -np.inf) -> np.ndarray:
    """Per server, the mask of GPUs that hold a prewarm of a model other than ``model``. ``clearing_for``: the
    model GPUs are being cleared for (``PolicyConfig.defragment_over_prewarms``): its own replicas and those that
    score below ``top`` (its ``best_score``, taken once before any move evicts a replica) do not count."""
    out = np.zeros(board.n_servers, dtype=np.int64)
    for s, reps in enumerate(board.by_server):
        for r in reps.values():
            if r.model != model and r.model != clearing_for and r.score >= top:
                out[s] |= r.mask
    return out


def _fits_elsewhere(board: Board, idle: np.ndarray, server: int, cleared: int, victims: list[InstanceState],
                    others: dict[str, np.ndarray], clearing_for: str | None = None, top: float = -np.inf) -> bool:
    """Whether the victims, largest tp first, each find tp idle GPUs on one server off the cleared ones and off
    other models' prewarms (a move that evicted them would turn those models' next scale-outs into cold loads:
    paper-conv at burst CV 4, seed 0, 40 of 41 moves evicted one, and P99 TTFT went from 3.6 to 7.1 s), as
    ``others_prewarms`` counts them."""
    left = idle.copy()
    left[server] &= ~cleared
    for v in sorted(victims, key=lambda v: -len(v.gpus)):
        gm = GROUPS[len(v.gpus)]
        if v.model not in others:
            others[v.model] = others_prewarms(board, v.model, clearing_for, top)
        room = left & ~others[v.model]
        fits = group_fits(room, len(v.gpus))
        if not fits.any():
            return False
        s, k = divmod(int(np.argmax(fits)), len(gm))
        left[s] &= ~int(gm[k])
    return True
