"""Time-sharing an over-subscribed cluster: which instances a model that waits with no instance (and finds no
free GPUs) may take GPUs from. The policy (``core.Policy._preempt_for``) decides whether to, and keeps the
freed GPUs for that model."""

from __future__ import annotations

from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, InstanceState

#: A model with no instance takes GPUs from others only when its load (in-flight + queued, 5 s average) is more
#: than this many times the harm of stopping their instances (see ``preemption_victims``). Above 1 so that two
#: models of equal load never swap GPUs back and forth; 2: the GPUs go to a model that needs them clearly more.
PREEMPT_LOAD_RATIO = 2.0


def preemption_victims(state: ClusterState, board: Board, model: str, now_s: float, load: dict[str, float],
                       stopping: set[str], served_s: float) -> tuple[float, list[InstanceState]] | None:
    """(harm, instances) of the aligned group of tp GPUs on one server that ``model`` could take at least harm,
    or None. A group qualifies when each of its GPUs is idle or held only by other models' instances that are
    ready, not draining and have served ``served_s`` since they became ready, and holds at least one of them.
    Harm: each instance's share of its model's ``load`` (load / the model's instances), doubled for a model's
    last instance (its requests wait for a start instead of moving to a sibling). ``stopping``: instances
    stopped earlier in the same decision (the board has freed their GPUs already, or they drain); a GPU where
    the board holds something the state does not (an instance started this round) does not qualify."""
    tp = state.models[model].tp
    on_gpu: dict[int, list[InstanceState]] = {}
    count: dict[str, int] = {}
    for inst in state.instances.values():
        if inst.instance_id in stopping:
            continue
        for g in inst.gpus:
            on_gpu.setdefault(g, []).append(inst)
        if not inst.draining:
            count[inst.model] = count.get(inst.model, 0) + 1
    best = None
    for srv in state.servers:
        gpus = list(srv.gpu_ids)
        for start in range(0, len(gpus) - tp + 1, tp):  # aligned groups: they leave whole blocks behind
            victims = _group_victims(board, gpus[start:start + tp], on_gpu, model, now_s, served_s)
            if not victims:
                continue
            lost: dict[str, int] = {}
            for v in victims:
                lost[v.model] = lost.get(v.model, 0) + 1
            harm = sum(load[m] / count[m] * n * (2.0 if n >= count[m] else 1.0) for m, n in lost.items())
            key = (harm, srv.server_id, start)
            if best is None or key < best[0]:
                best = (key, victims)
    return None if best is None else (best[0][0], best[1])


def _group_victims(board: Board, group: list[int], on_gpu: dict, model: str, now_s: float,
                   served_s: float) -> list[InstanceState]:
    """The instances to stop for ``group``, in id order; empty when the group does not qualify."""
    victims: dict[str, InstanceState] = {}
    for g in group:
        loc = board.local[g]
        here = on_gpu.get(g, ())
        if board.inst_count[loc] != len(here):
            return []  # an instance started (or stopped with requests) this round: not this group
        for inst in here:
            if inst.model == model or not inst.ready or inst.draining or now_s - inst.ready_s < served_s:
                return []
            victims[inst.instance_id] = inst
    return [victims[i] for i in sorted(victims)]
