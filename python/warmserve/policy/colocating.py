"""warmserve's first-tick colocation where the models outnumber the GPUs
(``PolicyConfig.colocate_when_oversubscribed``), a mixin of ``core.Policy`` kept apart so that core.py stays readable.
The layout is `shared`'s (``colocation.plan_shared``), weighted by the forecast; this module decides when it is laid
out, how each KV share is floored, when it is given up, and what an instance of it may hold once the rules
route to it."""

from __future__ import annotations

import math

from warmserve.geometry import blocks_for_tokens
from warmserve.policy import actions as A
from warmserve.policy.colocation import (UnplacedModelError, floor_kv_shares, placement_order, plan_shared,
                                         request_blocks, starts)
from warmserve.policy.state import ClusterState, InstanceState


#: Seconds the layout stands with GPUs gone, for their workers to start again (a CPU worker took 1.3 s in the review
#: that found it; a GPU worker loads its engine too), and how many times lost instances are laid out again at most.
RELAY_WAIT_S = 20.0
MAX_RELAYS = 3


class Colocating:
    """Mixed into ``core.Policy``; uses its ``cfg``, ``models``, ``period``, ``_co``, ``_new_id``, ``_hist`` and
    ``forecast_need`` (``demand.Demand``)."""

    #: The colocation's instances still standing (id -> whether it shares its GPUs); {} once given up or never laid
    #: out; None until the first tick decides.
    _pinned: dict[str, bool] | None = None
    #: Live GPUs when it was laid out, and the forecast window it was last checked against.
    _pinned_gpus = 0
    _pinned_window = 0
    #: Every instance the colocation laid out (kept after it is given up: their KV shares are its own).
    _colocated: frozenset[str] = frozenset()
    #: The model of each instance it laid out; when it first missed one lost with its GPUs (None: it misses none),
    #: and how many times it laid lost ones out again (``_relay``).
    _pinned_models: dict[str, str]
    _lost_s: float | None = None
    _relays = 0
    #: Spare slots moved to a busier model (``_follow_load``), and the last move: (busy model, spare's model, GPUs).
    layout_moves = 0
    last_layout_move: tuple[str, str, tuple[int, ...]] | None = None
    #: Busy models that took no slot at the last tick for want of bytes: each with the spare models whose idle
    #: slots hold too few for it (none idle is a wait, not said); read by the controller's layout log.
    layout_unmet: dict[str, tuple[str, ...]] = {}
    #: Moves undone (``_undo_moves``), and the last: (busy model, the spare's model back in its slot, GPUs).
    layout_undone = 0
    last_layout_undo: tuple[str, str, tuple[int, ...]] | None = None
    #: Per moved slot's instance, (the spare's model, its kv_fraction, the slot's GPUs); the (busy model, GPUs)
    #: moves whose instance was lost with its GPUs live, never made again (``_undo_moves``).
    _moves: dict[str, tuple[str, float, tuple[int, ...]]]
    _barred: set[tuple[str, tuple[int, ...]]]

    @property
    def layout_standing(self) -> tuple[str, ...]:
        """The models of the first tick's colocation while it stands (the rules stand aside meanwhile); () once
        given up or never laid out."""
        return tuple(sorted({self._pinned_models[i] for i in self._pinned})) if self._pinned else ()

    def _colocation(self, state: ClusterState, now_s: float, load: dict[str, float]) -> list | None:
        """The tick's actions while the colocation stands (its layout at the first tick, then none), None where
        the rules decide. Laid out at the first tick, on an empty cluster with co-serving on, when the models with
        forecast demand need more GPUs than are live (one instance each at its tp). An instance lost with its GPUs
        is laid out again once as many GPUs are live as before (``_relay``). Given up, for good, when GPUs join, when
        those lost are not back within RELAY_WAIT_S, when lost instances cannot be laid out again (or were MAX_RELAYS
        times), or when a window's forecast, from history reaching a day back, says those models fit. A request
        routed before the first tick starts an instance, and then nothing is laid out. While it stands route() may
        still start an instance on GPUs it left idle, and a busy model may take a spare slot (``_follow_load``;
        ``load``: each model's in-flight and queued requests, averaged over load_window_s)."""
        live = state.live_gpus()
        window = self.window_of(now_s)
        if self._pinned is None:
            self._pinned, self._pinned_models, self._pinned_window = {}, {}, window
            self._moves, self._barred = {}, set()
            never = state.unservable()
            need, demand = self._servable_need(window, never)
            if state.instances or self._co is None or need <= live:
                return None
            # a model no server can ever hold is left out: its requests get their error elsewhere, and were it
            # planned, plan_shared's UnplacedModelError refused the colocation for every other model too (found in
            # review: a light model's request waited 122.6 s beside a tp-4 model on 2-GPU servers, 0 s without it)
            models = {m: info for m, info in self.models.items() if m not in never}
            order = placement_order(models, demand)
            try:
                plan = plan_shared(state, models, order, demand, laminar=self.cfg.placement == "laminar",
                                   colocate_tp=self.cfg.colocate_tp, max_replicas=self.cfg.max_instances_per_model)
            except UnplacedModelError:  # no colocation holds every servable model: the rules do what they can
                self._co.layout_refused_gpus = live
                return None
            plan = floor_kv_shares(state, plan, request_blocks(models, self.cfg.coserve_context_tokens))
            if plan is None:  # a group cannot hold one such request for each of its models
                self._co.layout_refused_gpus = live
                return None
            out = self._pin(plan)
            self._pinned_gpus = live
            return out
        if not self._pinned:
            return None
        if window != self._pinned_window:
            self._pinned_window = window
            # the rules can give every model GPUs of its own again; a forecast from history reaching less than a
            # day back is not trusted with it (found in review: with no history, the first idle window forecast no
            # demand at all, and a fresh cluster gave its colocation up before its first request)
            if (self._hist.span_windows() >= self.period
                    and self._servable_need(window, state.unservable())[0] <= live):
                self._pinned = {}
                return None
        lost = [i for i in self._pinned if i not in state.instances]
        if live == self._pinned_gpus and self._lost_s is None and any(i in self._moves for i in lost):
            return self._undo_moves([i for i in lost if i in self._moves])
        if live == self._pinned_gpus and not lost:
            self._lost_s = None
            return self._follow_load(state, now_s, load) if self.cfg.layout_follows_load else []
        # An instance lost with its worker: the layout stands while the worker starts again (route() may start the
        # lost model on GPUs left idle meanwhile), then is laid out again on the GPUs free. Found in review: given
        # up at once, the rules spread three models over three CPU workers where it had co-served two, and each
        # request after waited 5-15 s for another model's instance to stop.
        self._lost_s = now_s if self._lost_s is None else self._lost_s
        if live < self._pinned_gpus and now_s - self._lost_s < RELAY_WAIT_S:
            return []
        if live == self._pinned_gpus and self._relays < MAX_RELAYS:
            out = self._relay(state, window, lost)
            if out is not None:
                return out
        self._pinned = {}  # GPUs joined or stayed gone, or the lost could not be laid out again: the rules take over
        return None

    def _follow_load(self, state: ClusterState, now_s: float, load: dict[str, float]) -> list:
        """At most one move a tick: a model whose load calls for more instances than it runs (§5's scale-out
        trigger), each of them ready, takes the GPUs of a spare: an idle instance of the layout, ready for
        min_lifetime_s, of a model that runs others and whose load keeps fewer (the scale-in trigger), on a group
        where the busy model runs nothing. The spare's bytes, weights and KV, become the new instance's; its
        co-residents keep theirs. Found in review: on a fresh server the layout weighs every model alike, its spare
        slot went to a quiet model by tie-break, and a flooded one kept a single instance with 168 requests queued
        while that spare idled. The two triggers' gap (0.8 and 0.5 of capacity) and min_lifetime_s keep a slot from
        moving back and forth. The models' sets stay, so the rules find the layout as planned when they take over."""
        cap = self.cfg.max_instances_per_model
        live: dict[str, list[InstanceState]] = {}
        for inst in state.instances.values():
            if not inst.draining:
                live.setdefault(inst.model, []).append(inst)
        wants = {m: self._wanted(m, load.get(m, 0.0), self._prefill_backlog_s(state, m, insts), state.queued(m))
                 for m, insts in live.items()}
        busy = [m for m, insts in live.items() if wants[m][0] > len(insts) and all(i.ready for i in insts)
                and not (cap and len(insts) >= cap)]
        self.layout_unmet = {}
        for m in sorted(busy, key=lambda m: (-wants[m][0] / len(live[m]), m)):
            info, mine = self.models[m], {g for i in live[m] for g in i.gpus}
            best, small = None, set()
            for r, insts in live.items():
                if r == m or max(1, math.ceil(wants[r][1])) >= len(insts) or state.queued(r):
                    continue
                for i in insts:
                    if (i.instance_id not in self._pinned or i.in_flight or not i.ready
                            or now_s - i.ready_s < self.cfg.min_lifetime_s or len(i.gpus) != info.tp
                            or mine & set(i.gpus) or (m, tuple(i.gpus)) in self._barred):
                        continue
                    frac = self._spare_share(state, i, m)
                    others = state.co_residents(i)
                    key = (sum(j.in_flight for j in others), i.instance_id)
                    if frac is None:
                        small.add(r)
                    elif best is None or key < best[0]:
                        best = (key, i, frac, bool(others))
            if best is None:
                if small:
                    self.layout_unmet[m] = tuple(sorted(small))
                continue
            _, spare, frac, shares = best
            new = A.StartInstance(self._new_id(m, "i"), m, spare.gpus, kv_fraction=frac,
                                  warm_engine=self.cfg.warm_engine)
            del self._pinned[spare.instance_id], self._pinned_models[spare.instance_id]
            self._moves.pop(spare.instance_id, None)
            self._moves[new.instance_id] = (spare.model, self._fraction_of(state, spare), tuple(spare.gpus))
            self._pin_one(new, shares)
            self.layout_moves += 1
            self.last_layout_move = (m, spare.model, tuple(spare.gpus))
            return [A.StopInstance(spare.instance_id), new]
        return []

    def _undo_moves(self, lost: list[str]) -> list:
        """Moved slots whose new instance was lost with its GPUs live (its start failed, or its engine died; one
        lost with its worker is laid out again by ``_relay`` once the worker is back): each gets its spare's model
        back, in the KV share the layout gave it, and that move is not made again. Before, the loss went to
        ``_relay``, which laid the busy model out once more where it could (the same failure again), else gave the
        layout up, and the rules then stopped the quiet models for the busy one."""
        out = []
        for iid in lost:
            spare_model, frac, gpus = self._moves.pop(iid)
            shares = self._pinned.pop(iid)
            busy = self._pinned_models.pop(iid)
            self._barred.add((busy, gpus))
            self.last_layout_undo = (busy, spare_model, gpus)
            self.layout_undone += 1
            act = A.StartInstance(self._new_id(spare_model, "i"), spare_model, gpus, kv_fraction=frac,
                                  warm_engine=self.cfg.warm_engine)
            self._pin_one(act, shares)
            out.append(act)
        return out

    def _pin_one(self, act: A.StartInstance, shares: bool) -> None:
        """Count the instance ``act`` starts as the layout's (a moved slot's, or its spare's back), a co-served host
        to the rules where it shares its GPUs (``shares``)."""
        self._pinned[act.instance_id], self._pinned_models[act.instance_id] = shares, act.model
        if shares:
            self._co.ids.add(act.instance_id)
        self._colocated |= {act.instance_id}

    def _fraction_of(self, state: ClusterState, inst: InstanceState) -> float:
        """A kv_fraction that gives an instance of ``inst``'s model on its GPUs the KV blocks ``inst`` holds
        (``state.kv_blocks_for``): half a block over them, so that the floor of room x fraction lands on them."""
        info = self.models[inst.model]
        room = min(state.gpus[g].total_bytes for g in inst.gpus) - info.shard_bytes
        return min(1.0, (inst.kv_blocks_total + 0.5) * info.kv_block_bytes / room) if room > 0 else 1.0

    def _spare_share(self, state: ClusterState, spare: InstanceState, model: str) -> float | None:
        """The KV fraction (``StartInstance.kv_fraction``) an instance of ``model`` gets in the bytes ``spare``
        frees on each of its GPUs (its weights shard and KV blocks), 1.0 where it has them to itself; None where
        those hold less than the layout's floor (``request_blocks``) beside the shard."""
        info, gone = self.models[model], self.models[spare.model]
        room = min(state.gpus[g].total_bytes for g in spare.gpus) - info.shard_bytes
        kv = gone.shard_bytes + spare.kv_blocks_total * gone.kv_block_bytes - info.shard_bytes
        floor = (request_blocks({model: info}, self.cfg.coserve_context_tokens)[model] + 1) * info.kv_block_bytes
        if kv < floor or room <= 0:
            return None
        return min(1.0, kv / room)

    def _pin(self, plan) -> list:
        """Start the instances of ``plan`` (``plan_shared``'s layout) as the colocation's own."""
        out = []
        for act, shared in starts(plan, lambda m: self._new_id(m, "i"), warm_engine=self.cfg.warm_engine):
            out.append(act)
            self._pinned[act.instance_id] = shared
            self._pinned_models[act.instance_id] = act.model
        # instances that share GPUs are co-served hosts to the rules, once they decide. In bulk, ``_relay``'s
        # earlier pins too: only the rules take an id out (``dedications``, ``update``), and they do not run while
        # the layout stands, so this marks no instance they made dedicated
        self._co.ids |= {i for i, shared in self._pinned.items() if shared}
        self._colocated |= frozenset(self._pinned)
        return out

    def _relay(self, state: ClusterState, window: int, lost: list[str]) -> list | None:
        """The lost instances' models again: each takes an instance of its model that runs outside the layout (one
        route() started), else the lost are laid out anew on the GPUs no instance holds; None when they cannot be."""
        self._relays += 1
        self._lost_s = None
        models = [self._pinned_models.pop(i) for i in lost]
        for i in lost:
            del self._pinned[i]
        pinned = set(self._pinned)
        for m in list(models):
            own = next((i for i in state.instances.values() if i.model == m and i.instance_id not in pinned), None)
            if own is not None:
                self._pinned[own.instance_id], self._pinned_models[own.instance_id] = bool(state.co_residents(own)), m
                pinned.add(own.instance_id)
                models.remove(m)
        if not models:
            return []
        wanted = {m: self.models[m] for m in models}
        demand = self._servable_need(window, state.unservable())[1]
        try:
            plan = plan_shared(state, wanted, placement_order(wanted, demand), demand,
                               laminar=self.cfg.placement == "laminar", colocate_tp=self.cfg.colocate_tp,
                               max_replicas=1)
        except UnplacedModelError:
            return None
        plan = floor_kv_shares(state, plan, request_blocks(wanted, self.cfg.coserve_context_tokens))
        return None if plan is None else self._pin(plan)

    def _servable_need(self, window: int, never: dict) -> tuple[int, dict[str, float]]:
        """``forecast_need`` less the GPUs of the models in ``never`` (``ClusterState.unservable``) that it counts:
        no GPU count serves those, so they neither call for a colocation nor keep one standing (found in review: a
        tp-4 model on 2-GPU servers laid one out for a single tp-1 model that fits on its own)."""
        need, demand = self.forecast_need(window)
        if never:
            names = sorted(never)
            need -= sum(self.models[m].tp for m, a in zip(names, self.forecast_all(window, names)[0]) if not a <= 0)
        return need, demand

    def _colocated_cap(self, inst: InstanceState) -> int | None:
        """Requests an instance of the given-up colocation may hold: what its own KV share holds at the planning
        context (the co-served route cap is an equal part of a host's KV, and its shares follow demand; found in
        review: the busy model's share was capped below what it held, a quiet one's above). None for any other
        instance."""
        if inst.instance_id not in self._colocated:
            return None
        return max(1, inst.kv_blocks_total // blocks_for_tokens(self.cfg.coserve_context_tokens))
