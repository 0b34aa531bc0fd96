"""Moving GPUs between models, for ``core.Policy`` (a mixin, kept apart so that core.py stays readable): reclaim
and time-sharing stop instances so that a model short of GPUs gets theirs (``arbitration.reclaim_victims`` /
``preemption_victims``); defragmenting moves light instances, make before break, so that a tensor-parallel model
finds a whole group of idle GPUs on one server (``arbitration.relocations``)."""

from __future__ import annotations

from warmserve.policy import actions as A
from warmserve.policy.arbitration import (PREEMPT_LOAD_RATIO, freed_groups, migration_plan, preemption_victims,
                                          reclaim_victims, relocations)
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState


class GpuMoves:
    """Mixed into ``core.Policy``; uses its ``cfg``, ``models``, ``_co``, ``_reserved``, ``_reserved_base``,
    ``_preempted``, ``_preempting``, ``_moving``, ``_stop``, ``_held_for_others`` and
    ``_start_outside_reservations``."""

    def _defragment(self, state: ClusterState, now_s: float, board: Board, out: list) -> None:
        """``arbitration.relocations``, make before break: each instance to move gets its replacement started
        (``_start``: a hit where its model has a loaded prewarm) and stops once that one serves; meanwhile both
        take requests. A stopped one is not revived (route() would bring it back). One move at a time."""
        stopped = A.stopping(out)  # this tick's reclaim may have stopped the old one already (found in review:
        # it was stopped twice, its GPU counted idle twice, and a prewarm placed under the new owner's instance)
        for new_id, old_id in list(self._moving.items()):
            new, old = state.instances.get(new_id), state.instances.get(old_id)
            if new is None or old is None or old.draining or old_id in stopped:
                del self._moving[new_id]
            elif new.ready:
                del self._moving[new_id]
                self._preempted.add(old_id)
                self._stop(state, old, now_s, board, out)
        if self._moving:
            return
        reserved = {g for gpus in self._reserved.values() for g in gpus}
        fixed = A.stopping(out)  # and co-serving's merges in flight: they move those models already
        if self._co is not None and self._co.merging:
            fixed |= {i.instance_id for i in state.instances.values() if i.model in self._co.merging}
        got = relocations(state, board, now_s, self.cfg.min_lifetime_s, fixed, reserved,
                          self.cfg.defragment_over_prewarms)
        if got is None:
            return
        _, server, mask, victims, off_limits = got
        for v in victims:
            # not on the GPUs being cleared, nor on the prewarms the move was checked against (the start would
            # evict them; defragment_over_prewarms leaves out those worth less than the cleared model's next start)
            off = off_limits[v.model].copy()
            off[server] |= mask
            act = self._start_outside_reservations(
                state, board, v.model, off=[g for s in range(board.n_servers) for g in board.gpus_of(s, int(off[s]))])
            if act is not None:
                out.append(act)
                self._moving[act.instance_id] = v.instance_id

    def _migrate(self, state: ClusterState, board: Board, wanted: set[str], need: int, out: list) -> bool:
        """Draining instances hand their requests over where that gives a wanting model a group to start on
        (``arbitration.migration_plan``, up to ``need`` groups); their weights stay as a prewarm (the wanting
        model's start may evict it). Returns whether any GPU was freed."""
        moved = migration_plan(state, board, A.stopping(out), self.routed_capacity(),
                               self.cfg.migrate_max_in_flight, {self.models[m].tp for m in wanted}, need,
                               self._co.ids if self._co is not None else ())
        for inst in moved:
            self._migrate_out(inst, board, out)
        return bool(moved)

    def _migrate_out(self, inst, board: Board, out: list) -> None:
        """``inst`` hands its requests over (``A.Migrate``: recomputed elsewhere); its weights stay on its GPUs as a
        prewarm where the policy keeps stopped instances' weights."""
        out.append(A.Migrate(inst.instance_id))
        self._retain.pop(inst.instance_id, None)
        if self.cfg.prewarm and self.cfg.retain_stopped:
            self._keep_weights(inst.instance_id, inst.model, inst.gpus, board, out)

    def _reopen_host(self, state: ClusterState, now_s: float, board: Board, wanted: set[str], have: dict,
                     out: list) -> set[str]:
        """Co-serving, over-subscribed: a light model with no instance that found no host (in ``wanted``, least met
        and longest starved first) gets one on the GPUs of a light model's dedicated instance
        (``CoServing.reopenable``): its requests move (``A.Migrate``: vLLM-style recompute) to a co-served
        instance of its model started there at once from the weights it leaves (a hit), and ``model`` joins that
        host when the driver routes the queues after the tick (route(): ``could_join``), or at the next tick. Found
        in review: with every GPU so held, such a model waited for time-sharing (aged preemption, 60-120 s at the
        default preempt_after_s), took a GPU to itself, and the model stopped for it took it back the same way.
        One per tick (the next starved model may join the same host). Not with migrate_max_in_flight 0 (requests
        are never moved), nor while a model that is not light is short too (measured: paper-conv, 12 models, rules
        only, seed 0, a host reopened then kept the busiest 13B from a tp-2 group, P99 TTFT 46 -> 1187 s; time-
        sharing arbitrates there as before). Returns the models a host was reopened for."""
        co = self._co
        if not self.cfg.migrate_max_in_flight or any(not co.light(w) for w in wanted):
            return set()
        reserved = {g for gpus in self._reserved.values() for g in gpus}
        for m in sorted(wanted, key=lambda m: (self._starved_since.get(m, float("inf")), m)):
            if have[m] or m not in self._starved_since or m in self._preempting:
                continue
            for inst in co.reopenable(state, m, now_s, self.cfg.min_lifetime_s, A.stopping(out), reserved):
                self._preempted.add(inst.instance_id)  # never revived: its GPUs are the host now
                board.stop_instance(inst.gpus)
                co.stopped_idle.add(inst.instance_id)
                self._migrate_out(inst, board, out)
                act = co.join(state, board, inst.model, self._held_for_others(inst.model), new_host=True,
                              new_id=self._new_id)
                if act is not None:  # None (not expected: reopenable checked what join does): its requests wait
                    self._co_started([act])  # and the model starts on the idle GPUs as any model with none
                    out.append(act)
                    co.reopened_for(act.instance_id, m, now_s)  # closed again once m is quiet (_close_reopened)
                return {m}
        return set()

    def _close_reopened(self, state: ClusterState, now_s: float, board: Board, have: dict, out: list) -> set[str]:
        """A host reopened for a starved model (``_reopen_host``) whose guest went quiet, as the scale-in counts
        it, for min_lifetime_s (longer for a guest that came back after its last host closed:
        ``CoServing.quiet_guests``): the guest's instances stop (nothing in flight: at once), and the next tick
        dedicates the owner's instance in place with its whole KV
        (``CoServing.dedications``). Found in review: the owner stayed co-served for good beside the guest's idle
        instance, with a fifth of its KV. Returns the ids stopped."""
        stopped = set()
        for inst in self._co.quiet_guests(state, now_s, self.cfg.min_lifetime_s, A.stopping(out)):
            self._stop(state, inst, now_s, board, out)
            have[inst.model] -= 1
            stopped.add(inst.instance_id)
        return stopped

    def _reclaim_for(self, state: ClusterState, model: str, now_s: float, have: dict, demand: dict, board: Board,
                     out: list) -> tuple[bool, bool]:
        """Reclaim (``arbitration.reclaim_victims``): stop the instances on the GPU group whose loss leaves their
        models best served, if they stay at least as well served as ``model`` will be, and reserve the group for
        ``model``. Returns (whether instances were stopped, whether the group is free at once: nothing was in
        flight there); draining ones free it on a later tick. One reclaim in flight per model: its victims drain
        and the new instance shows in the load before the next (their share rule uses that load)."""
        if not self.cfg.reclaim_gpus or self._preempting.get(model, set()) & state.instances.keys():
            return False, False
        stopping = A.stopping(out)
        band = self.cfg.scale_out_threshold / self.cfg.scale_in_threshold
        got = reclaim_victims(state, board, model, now_s, have, demand, stopping, self.cfg.min_lifetime_s,
                              self._held_for_others(model), band, self.cfg.reclaim_floor_share,
                              starved=self.cfg.reclaim_for_starved and have[model] == 0)
        if got is None:
            return False, False
        for v in got[1]:
            have[v.model] -= 1
        return True, self._take_gpus(state, model, got[1], got[2], have[model], now_s, board, out)

    def _preempt_for(self, state: ClusterState, model: str, now_s: float, avg5: dict, board: Board,
                     out: list, base: int = 0) -> bool:
        """Time-share: stop the instances on the GPUs whose loss hurts least (``arbitration.preemption_victims``)
        when ``model``'s load is PREEMPT_LOAD_RATIO times their harm, and reserve their group for it. Returns
        whether they were freed at once (nothing was in flight there); draining ones free them on a later tick,
        where this model, having waited longest, comes first. Nothing happens while earlier victims drain.
        ``base``: the model's instances (co-served ones, for a model that outgrew its host; else 0)."""
        if self._preempting.get(model, set()) & state.instances.keys():
            return False
        stopping = A.stopping(out)
        keep_last = None
        if base:  # it outgrew its host: it has an instance; it leaves no model without one that no host could take
            keep_last = {m for m in self.models if not self._co.could_join(state, m)}
        got = preemption_victims(state, board, model, now_s, avg5, stopping,
                                 max(self.cfg.preempt_after_s, self.cfg.min_lifetime_s), self._held_for_others(model),
                                 keep_last)
        # aged: the longer it has waited with no instance, the more harm its load outweighs (found in review: a
        # model of low load waited for ever behind a steadily busy model's last instance, its requests unanswered)
        # (on the time scale of a turn, never under a second: found in review, preempt_after_s 0 multiplied a
        # wait of one tick by 5e9 and swapped GPUs at every tick; two models of equal load now time-share one
        # GPU, each turn about 4 x preempt_after_s, where one of them waited for ever before)
        waited_s = now_s - self._starved_since.get(model, now_s)
        turn_s = max(self.cfg.preempt_after_s, self.cfg.min_lifetime_s, 1.0)
        load = avg5[model] * max(1.0, waited_s / turn_s)
        overdue = 0 < self.cfg.max_starved_s <= waited_s
        if got is None or (load <= PREEMPT_LOAD_RATIO * got[0] and not overdue):
            return False
        return self._take_gpus(state, model, got[1], got[2], base, now_s, board, out)

    def _groups_to_free(self, state: ClusterState, now_s: float, board: Board, keep: dict, active: dict,
                        wanted: set[str], skip: set[str], stopping: set[str]) -> set[int]:
        """The GPUs of the groups that the scale-in may free for a model in ``wanted`` (of its tp; the caller leaves
        out models that can never start, ``ClusterState.unservable``): aligned groups completed by idle GPUs and by
        the GPUs of every instance that may stop entirely (its model, not wanted nor in ``skip``, keeps none: ``keep``;
        ready for min_lifetime_s, not stopping). A GPU counts only when all the instances on it may stop. A
        model's last instance stops only where its GPUs are among them (found in review: an idle one stopped for
        a tp-2 model whose group's other GPU stayed busy; its GPU stayed idle and its next request waited for a
        cold start, for nothing)."""
        tps = {self.models[w].tp for w in wanted}
        if not tps:
            return set()
        on_gpu: dict[int, int] = {}
        for m, insts in active.items():
            if keep[m] or m in wanted or m in skip:
                continue
            for inst in insts:
                if inst.ready and inst.instance_id not in stopping and now_s - inst.ready_s >= self.cfg.min_lifetime_s:
                    for g in inst.gpus:
                        on_gpu[g] = on_gpu.get(g, 0) + 1
        gpus = [g for g, n in on_gpu.items() if g in board.local and board.inst_count[board.local[g]] == n]
        return {g for group in freed_groups(state, board, gpus, tps) for g in group}

    def _take_gpus(self, state: ClusterState, model: str, victims: list, group: tuple[int, ...], base: int,
                   now_s: float, board: Board, out: list) -> bool:
        """Stop ``victims`` for ``model`` (which has ``base`` instances) and reserve the whole ``group`` they
        hold for it, its idle GPUs too (found in review: with the victims' GPUs alone reserved, another model
        started on the group's idle GPU and was preempted in turn, four stops and about 60 s more wait for a tp-2
        model); returns whether the victims' GPUs are free at once."""
        freed = True
        for v in victims:
            self._preempted.add(v.instance_id)
            self._stop(state, v, now_s, board, out)
            freed &= v.in_flight == 0
        self._preempting[model] = {v.instance_id for v in victims}
        self._reserved[model] = tuple(sorted(group))
        self._reserved_base[model] = base
        return freed
