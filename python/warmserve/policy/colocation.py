"""Static colocation of models on GPU groups (MuxServe-like): how many groups each tensor-parallel class gets, which
models each group hosts and the KV share of each. Pure layout over a ``ClusterState``: `shared` and `dedicated`
(``baselines.StaticPolicy``) lay it out once; warmserve lays it out where the models cannot each have GPUs of
their own (``colocating.Colocating``); the simulator's search (``sim.shared_search``) scores layouts with it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from warmserve.errors import InvalidArgumentError
from warmserve.geometry import blocks_for_tokens
from warmserve.policy import actions as A
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, ModelInfo, runs_alone


#: Share of a GPU the weights of the models that share a `shared` group may take together; the rest is KV cache
#: (``plan_shared`` packs to it and ``default_groups`` sizes each class's floor by it). A model over the share of
#: every group of its class is not held to it: it runs alone and needs only what a dedicated instance needs
#: (``fits_alone``).
WEIGHT_SHARE = 0.8


class UnplacedModelError(InvalidArgumentError):
    """A static layout leaves a model without an instance: its requests would never be answered."""


@dataclass(frozen=True)
class SharedLayout:
    """A `shared` layout: GPU groups per tensor-parallel class, and colocation."""

    #: (tp, number of tp-GPU groups) per class of models with that tp
    groups: tuple[tuple[int, int], ...]
    #: most models one group hosts (1: none colocated); raised where a class has more models than groups
    per_group: int = 2
    #: (model, demand weight) pairs that replicas and KV shares follow; empty: the policy's history
    demand: tuple[tuple[str, float], ...] = ()


def fits_alone(m: ModelInfo, gpu_bytes: int) -> bool:
    """Whether ``m`` may run alone on GPUs of ``gpu_bytes``: its shard and one KV block, the test every other
    placement makes (``ClusterState.unservable``, ``Board.choose_for_instance``). Found in review (issue #11): held to
    WEIGHT_SHARE, a 65 GB tp-1 model on 77 GB GPUs got no slot in any layout, and the layout was refused, although a
    dedicated instance of it serves with the 12 GB its shard leaves."""
    return m.shard_bytes + m.kv_block_bytes <= gpu_bytes


def placement_order(models: dict, demand: dict) -> list[str]:
    """The order layouts place models in: widest tensor-parallel class first (so its groups pack before the GPUs
    fragment), then by demand, the name breaking ties so a layout is the same on every run."""
    return sorted(models, key=lambda m: (-models[m].tp, -demand[m], m))


def tp_classes(models: dict, order: list[str]) -> dict[int, list[str]]:
    """The models by tensor-parallel degree, each class in ``order``."""
    classes: dict[int, list[str]] = {}
    for m in order:
        classes.setdefault(models[m].tp, []).append(m)
    return classes


def default_groups(state: ClusterState, models: dict, order: list[str], demand: dict, *,
                   colocate_tp: bool = True) -> tuple[tuple[int, int], ...]:
    """Groups per tp class in proportion to the class's demand x tp (the layout without a search), and at least
    the groups whose weight room (80% of the largest GPU, as ``plan_shared`` packs) holds one shard of each of its
    models, a shard above that room counting a group of its own (``fits_alone``) (found in review: one 4-GPU group
    for two 70B copies whose demand was low left the second without an instance); without ``colocate_tp``, at
    least one group per model of a tp > 1 class."""
    live = [g for g in state.gpus if not g.gone]
    n_gpus = len(live)
    # a lower bound, by the largest GPU: sized by the smallest, a mixed fleet asked for more groups than it needs
    # and the default layout was refused where a smaller count places every model (found in review)
    gpu_bytes = max((g.total_bytes for g in live), default=0)
    classes = tp_classes(models, order)
    weight = {tp: sum(demand[m] * tp for m in ms) for tp, ms in classes.items()}
    total = sum(weight.values())

    def least(tp: int) -> int:  # first-fit of the class's shards, largest first, into groups' weight room
        if runs_alone(tp, colocate_tp):
            return len(classes[tp])
        rooms: list[float] = []
        for shard in sorted((models[m].shard_bytes for m in classes[tp]), reverse=True):
            k = next((i for i, r in enumerate(rooms) if shard <= r), None)
            if k is None:
                rooms.append(WEIGHT_SHARE * gpu_bytes)
                k = len(rooms) - 1
            # a shard above the share opens a group alone: the room goes below zero and nothing joins it, as
            # plan_shared lays it out
            rooms[k] -= shard
        return max(1, len(rooms))

    floor = {tp: least(tp) for tp in classes}
    want = {tp: max(floor[tp], int(n_gpus * weight[tp] / total // tp)) for tp in classes}
    # a class raised to its floor takes GPUs from the others (found in review: the floors came on top of the
    # shares, and the last class planned absorbed the excess): the class furthest above its share gives first
    while sum(tp * g for tp, g in want.items()) > n_gpus:
        over = [tp for tp in classes if want[tp] > floor[tp]]
        if not over:
            break  # the floors alone do not fit: plan_shared names the model left out
        tp = max(over, key=lambda c: (c * want[c] - n_gpus * weight[c] / total, c))
        want[tp] -= 1
    return tuple((tp, want[tp]) for tp in sorted(classes, reverse=True))


def plan_shared(state: ClusterState, models: dict, order: list[str], demand: dict,
                layout: SharedLayout | None = None, *, laminar: bool = True, colocate_tp: bool = True,
                max_replicas: int = 0) -> list[tuple[tuple[int, ...], list[tuple[str, float]]]]:
    """MuxServe-like static colocation: (GPU group, [(model, KV fraction)]) for every group used.

    Each tp class gets ``layout.groups`` tp-GPU groups (default: ``default_groups``, then whatever GPUs are left
    go to the class furthest below its share). Each group hosts up to ``per_group`` of its class's models (more
    where the class has more models than groups; weights up to 80% of memory together, WEIGHT_SHARE, except a model
    over every group's share, which runs alone and needs only its shard and one KV block, ``fits_alone``); every
    model gets one replica, popular models more (largest remainder of demand), spread so that group loads even out;
    the memory the weights leave is split among a group's models in proportion to their demand per replica. Raises
    UnplacedModelError when a model gets no instance. Does not change ``state``. ``laminar``: the groups are chosen
    by §3's laminar placement (False: round-robin, as the policy's ablation places). ``colocate_tp`` False: a
    tp > 1 group hosts one model (``PolicyConfig.colocate_tp``). ``max_replicas``: most replicas of a model (0: no
    limit; ``PolicyConfig.max_instances_per_model``), the groups' slots left empty past it."""
    board = Board(state, laminar=laminar)
    classes = tp_classes(models, order)
    fill_rest = layout is None
    if layout is None:
        layout = SharedLayout(default_groups(state, models, order, demand, colocate_tp=colocate_tp))
    want = dict(layout.groups)
    groups: dict[int, list[tuple[int, ...]]] = {tp: [] for tp in classes}

    def take(tp: int) -> bool:
        pick = board.choose_for_instance(classes[tp][0])
        if pick is None:
            return False
        groups[tp].append(pick[0])
        return True

    for tp in sorted(classes, reverse=True):  # big groups first, so they find whole blocks
        for _ in range(want.get(tp, 0)):
            if not take(tp):
                break
    if fill_rest:
        n_gpus = state.live_gpus()
        weight = {tp: sum(demand[m] * tp for m in ms) for tp, ms in classes.items()}
        total = sum(weight.values())
        quota = {tp: n_gpus * weight[tp] / total for tp in classes}
        while True:  # the GPUs left: to the class furthest below its share that still fits
            ranked = sorted(classes, key=lambda tp: (-(quota[tp] - len(groups[tp]) * tp) / tp, -tp))
            if not any(take(tp) for tp in ranked):
                break
    out: list = []

    def group_bytes(g) -> int:
        # each group by its own smallest GPU (an instance's memory is that of its smallest GPU, kv_blocks_for),
        # not the cluster's: a small GPU elsewhere shrank every share of a mixed fleet, or refused the layout
        return min(state.gpus[i].total_bytes for i in g)

    for tp, ms in classes.items():
        gs = groups[tp]
        if not gs:
            raise UnplacedModelError(
                f"shared layout: no {tp}-GPU group for models {ms} (groups asked: {want.get(tp, 0)}): give the "
                f"tp-{tp} class a group, or let the layout search choose", model=ms[0], tp=tp)
        share = [WEIGHT_SHARE * group_bytes(g) for g in gs]  # weights of the models sharing a group, the rest KV
        over = {m for m in ms if models[m].shard_bytes > max(share)}  # over every group's share: they run alone
        if runs_alone(tp, colocate_tp):
            if len(ms) > len(gs):
                raise UnplacedModelError(
                    f"shared layout: {len(ms)} tp-{tp} models {ms} on {len(gs)} {tp}-GPU group(s), and a "
                    f"tensor-parallel model runs alone on its group here (colocate_tp is off: the live workers run a "
                    f"tp shard alone): give the cluster {tp * (len(ms) - len(gs))} more GPUs, or serve fewer tp-{tp} "
                    f"models", model=ms[len(gs)], tp=tp, groups=len(gs))
            per_group = 1
            lone = 0
        else:
            # a model over the weight share of every group takes one alone, so the others share the rest: counted
            # over all groups, three 7Bs beside a 65 GB model on two 77 GB GPUs got two per group and one was left out
            lone = min(len(gs), len(over))
            rest = len(gs) - lone
            per_group = max(min(layout.per_group, len(ms)), math.ceil((len(ms) - lone) / rest) if rest else 1)
        # a group a model holds alone has one slot: counted at per_group, the extra replicas planned for it found no
        # room and the KV shares of their models were split as if they had
        slots = min(lone + (len(gs) - lone) * per_group, len(gs) * len(ms))
        reps = {m: 1 for m in ms}  # every model once, the rest of the slots by demand (largest remainder)
        d_total = sum(demand[m] for m in ms)
        most = min(len(gs), max_replicas or len(gs))  # found in review: `shared` laid out 8 of a model capped at 1
        for _ in range(max(0, slots - len(ms))):
            m = max((m for m in ms if reps[m] < most),
                    key=lambda m: (demand[m] / d_total * slots - reps[m], m), default=None)
            if m is None:
                break
            reps[m] += 1
        hosted: list[list[str]] = [[] for _ in gs]
        load = [0.0] * len(gs)
        room = list(share)
        # every model's first replica before any model's extra ones, so extra replicas of a popular model never
        # take the room a model needs for its only instance; of those, the models over every group's share first,
        # so that the light models have not yet taken every group they could run alone on
        todo = sorted(((k > 0, demand[m] / reps[m], m) for m in ms for k in range(reps[m])),
                      key=lambda x: (x[0], x[2] not in over, -x[1], x[2]))
        for _, d, m in todo:
            # a model over every group's share (the `lone` ones) may take an empty group where it fits alone
            # (fits_alone); its room then drops below zero, so no other model joins it and the KV room it keeps is
            # all the group's. Any other model keeps to the share (found in review: a 35 GB model within an 80 GB
            # GPU's share took a 40 GB GPU alone, and the three 10 GB models had two slots left)
            fits = [k for k in range(len(gs)) if m not in hosted[k] and len(hosted[k]) < per_group
                    and (models[m].shard_bytes <= room[k]
                         or m in over and not hosted[k] and fits_alone(models[m], group_bytes(gs[k])))]
            if not fits:
                continue
            k = min(fits, key=lambda k: (load[k], k))
            hosted[k].append(m)
            load[k] += d
            room[k] -= models[m].shard_bytes
        placed = {m for fit in hosted for m in fit}
        for m in ms:
            if m not in placed:
                raise _unplaced(models[m], tp, [group_bytes(g) for g in gs], per_group)
        for g, fit in zip(gs, hosted):
            if not fit:
                continue
            size = group_bytes(g)
            kv = size - sum(models[m].shard_bytes for m in fit)
            d_sum = sum(demand[m] / reps[m] for m in fit)
            out.append((g, [(m, kv * (demand[m] / reps[m]) / d_sum / (size - models[m].shard_bytes))
                            for m in fit]))
    return out


def _unplaced(m: ModelInfo, tp: int, sizes: list[int], per_group: int) -> UnplacedModelError:
    """The error for ``m`` left without an instance by ``plan_shared`` on groups whose GPUs have ``sizes`` bytes,
    by the rule that bound it: a model within some group's share is held to the share (found in review: its message
    offered the alone rule, which it is not given, for a 10 GB model that fits beside others easily); one over
    every group's share runs alone, so it needs an empty group where its shard and one KV block fit."""
    gb = m.shard_bytes / 1e9
    head = f"shared layout: model {m.name!r} gets no instance: its {gb:.1f} GB shard"
    fix = f"give the tp-{tp} class more groups, or let the layout search choose"
    most = WEIGHT_SHARE * max(sizes) / 1e9
    if m.shard_bytes <= WEIGHT_SHARE * max(sizes):
        why = (f"does not fit beside the models on any of the {len(sizes)} {tp}-GPU group(s) (at most {per_group} "
               f"models a group, whose weights may take {WEIGHT_SHARE:.0%} of its GPU memory: {most:.1f} GB per GPU "
               f"on the largest)")
    else:
        room = sum(fits_alone(m, size) for size in sizes)
        block = f"one {m.kv_block_bytes / 2**20:.0f} MiB KV block"
        why = (f"is over the {WEIGHT_SHARE:.0%} of GPU memory that the weights of models sharing a group may take "
               f"({most:.1f} GB per GPU on the largest of the {len(sizes)} {tp}-GPU group(s)), so it runs alone, and "
               + (f"each of the {room} group(s) where its shard and {block} fit holds another model" if room else
                  f"its shard and {block} fit on none of them ({max(sizes) / 1e9:.1f} GB per GPU on the largest)"))
        if not room:
            fix = f"serve it at a higher tp or on GPUs with more than {(m.shard_bytes + m.kv_block_bytes) / 1e9:.1f} GB"
    return UnplacedModelError(f"{head} {why}: {fix}", model=m.name, tp=tp, groups=len(sizes))


def floor_kv_shares(state: ClusterState, plan: list, min_blocks: dict[str, int]) -> list | None:
    """``plan`` (as ``plan_shared`` returns it) with every model's KV share raised to hold at least
    ``min_blocks[model]`` blocks, taken from its co-residents in proportion to what they hold above their own
    floors; None where a group's KV room cannot hold every floor. A share by demand alone can be too small for one
    request of a quiet model beside a busy one. Bytes per GPU; a model's fraction is of the GPU's memory after its
    own shard, as ``state.kv_blocks_for`` reads it."""
    out = []
    for gpus, hosted in plan:
        gpu_bytes = min(state.gpus[g].total_bytes for g in gpus)
        room = {m: gpu_bytes - state.models[m].shard_bytes for m, _ in hosted}
        # one block more than the floor: kv_blocks_for rounds each share down to whole blocks
        floor = {m: (min_blocks[m] + 1) * state.models[m].kv_block_bytes for m, _ in hosted}
        have = {m: frac * room[m] for m, frac in hosted}
        if sum(floor.values()) > sum(have.values()):
            return None
        short = sum(max(0.0, floor[m] - have[m]) for m in have)
        spare = {m: max(0.0, have[m] - floor[m]) for m in have}
        total_spare = sum(spare.values())
        new = {m: max(have[m], floor[m]) - (short * spare[m] / total_spare if total_spare else 0.0) for m in have}
        out.append((gpus, [(m, new[m] / room[m]) for m, _ in hosted]))
    return out


def request_blocks(models: dict[str, ModelInfo], context_tokens: int) -> dict[str, int]:
    """KV blocks of the one request each model's share must hold (``floor_kv_shares``): one of ``context_tokens``
    (the planning context, ``PolicyConfig.coserve_context_tokens``), or of the model's longest accepted context
    where that is known and longer (found in review: ``state.kv_blocks_for`` raises a co-served share to the
    latter, taking nothing from the others, which over-commits the GPU; and the simulator's shares refused the
    longest requests of a quiet model)."""
    return {m: blocks_for_tokens(max(context_tokens, info.max_context_tokens)) for m, info in models.items()}


def floored(state: ClusterState, plan: list, models: dict[str, ModelInfo], context_tokens: int) -> list:
    """`shared`'s layout as laid out (``baselines.StaticPolicy``) and as its search scores it: ``plan`` with each
    share floored at one request (``request_blocks``), taken from the group's other shares, or the shares by demand
    where a group cannot hold every floor (``kv_blocks_for`` then raises each to its floor all the same, and the
    group's instances take turns for the memory they together lack, live and simulated)."""
    return floor_kv_shares(state, plan, request_blocks(models, context_tokens)) or plan


def starts(plan: list, new_id, *, warm_engine: bool) -> list[tuple[A.StartInstance, bool]]:
    """The instances of a layout (as ``plan_shared`` returns it), each with whether it shares its GPUs;
    ``new_id(model)`` names each."""
    return [(A.StartInstance(new_id(m), m, gpus, kv_fraction=frac, warm_engine=warm_engine), len(hosted) > 1)
            for gpus, hosted in plan for m, frac in hosted]
