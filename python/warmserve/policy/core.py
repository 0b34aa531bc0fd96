"""The policy object a driver calls: route on arrival, tick every second or so (see the package docstring)."""

from __future__ import annotations

import math
from collections import Counter, deque

from warmserve.errors import UnknownModelError
from warmserve.policy import actions as A
from warmserve.policy.arbitration import GroupScans, least_met_first
from warmserve.policy.colocating import Colocating
from warmserve.policy.concurrency import WindowMeter
from warmserve.policy.config import PolicyConfig
from warmserve.policy.coserve import CoServing
from warmserve.policy.demand import FITS_PER_TICK, Demand
from warmserve.policy.forecast import ModelForecaster
from warmserve.policy.history import History
from warmserve.policy.moves import GpuMoves
from warmserve.policy.placement import Board
from warmserve.policy.planner import plan_model
from warmserve.policy.signals import PREFILL_PROFILE_TOKENS, LoadSignals  # noqa: F401 (re-exported for tests)
from warmserve.policy.state import ClusterState, InstanceState, ModelInfo, least_loaded


class Policy(Demand, LoadSignals, GpuMoves, Colocating):
    """WarmServe's policy and its ablations; the static baselines subclass it."""

    def __init__(self, name: str, models: list[ModelInfo], config: PolicyConfig, history=None, calendar=None):
        self.name = name
        self.cfg = config
        self.models = {m.name: m for m in models}
        self.period = max(1, round(86400 / config.window_s))
        self._hist = History(sorted(self.models), config.window_s, calendar)  # its calendar: the days load follows
        self._fc = {m: tuple(ModelForecaster(config.forecaster, self.period, n_resid=config.residual_windows, name=m)
                             for _ in "ap") for m in self.models}  # the average's and the peak's
        # sampled series: the in-flight load, the prefill backlog, the in-flight load for scale_in_window_s's mean
        self._load, self._prefill_load, self._keep_load = ({m: deque() for m in self.models} for _ in "lpk")
        self._need_peaks: dict[str, deque] = {m: deque() for m in self.models}  # (time, instances) (scale_in_hold_s)
        self._least_loaded = least_loaded(config.route_least_prefill)  # route()'s order among instances with room
        #: Model -> when it last began waiting with no instance (cleared once it has one): the older, the earlier
        #: it gets GPUs among models whose demand is equally unmet.
        self._starved_since: dict[str, float] = {}
        self._busy_s: dict[str, float] = {}  # model -> the last tick that saw it loaded (last_instance_hold_s)
        #: Instances stopped so that another model gets their GPUs (reclaimed or time-shared): not revived while
        #: they drain and that model still waits for the GPUs (else their model would take them straight back).
        self._preempted: set[str] = set()
        #: Instances being moved by ``_defragment``: replacement id -> the id of the instance it replaces.
        self._moving: dict[str, str] = {}
        #: Model -> the instances stopped for it: no further reclaim or preemption for it while they drain.
        self._preempting: dict[str, set[str]] = {}
        #: Model -> the GPUs those instances free: no other model starts there until the model has more
        #: instances than it had then (``_reserved_base``) or no longer wants more.
        self._reserved: dict[str, tuple[int, ...]] = {}
        self._reserved_base: dict[str, int] = {}
        self._meters: dict[str, WindowMeter] = {}
        #: Co-serving of light models (None: off).
        self._co = CoServing(config, self.models) if config.coserve_tpot_s > 0 else None
        self._fc_window: tuple[int, dict[str, float]] | None = None  # (window, forecast average per model)
        self._inflight: dict[str, int] = {m: 0 for m in self.models}
        self._exact = False
        self._scores: dict[str, float] = {}
        self._n = 0
        self._rr_cursor = 0  # where round-robin placement goes on next, kept across rounds
        self._plan_window = None
        self._plan_s = -math.inf
        self._retain: dict[str, tuple[str, tuple[int, ...], float]] = {}  # draining id -> (model, gpus, stop time)
        self._no_room: tuple | None = None  # (cluster key, tp) for which no idle GPU group exists
        self._index_key: tuple | None = None
        self._kept: set[str] = set()  # prewarms holding a stopped instance's weights
        self._index: tuple[dict[str, list[InstanceState]], set[int]] = ({}, set())
        for model, series in (history or {}).items():
            self.load_history(model, *series)

    # ---- inputs (the windows and forecasts: demand.Demand) ------------------------------------------------

    def _model(self, model: str) -> ModelInfo:
        m = self.models.get(model)
        if m is None:
            raise UnknownModelError(f"model {model!r} is not served; known: {sorted(self.models)}", model=model)
        return m

    def observe_decode_step(self, model: str, step_s: float, batch: float, now_s: float) -> None:
        """A decode step of ``model`` as its engines measured it: ``step_s`` seconds of wall time per step at ``batch``
        running sequences, seen at ``now_s`` (policy clock). The live controller feeds these from the workers' Stats
        (``controller.observed``); the simulator feeds none. Co-serving then takes the model's step as no less than the
        measured one for OBSERVED_STEP_MAX_AGE_S (``cosizing.HostSizing.step_s``); nothing else reads it. Ignored
        without co-serving, for a model not served, or a step that is not a positive finite number."""
        if self._co is not None and model in self.models and 0 < step_s < math.inf and 0 <= batch < math.inf:
            self._co.observe(model, float(step_s), float(batch), now_s)

    # ---- helpers ----------------------------------------------------------------------------------------

    def _new_id(self, model: str, kind: str) -> str:
        self._n += 1
        return f"{model}/{kind}{self._n}"

    def _start(self, board: Board, model: str) -> A.StartInstance | None:
        got = board.choose_for_instance(model)
        if got is None:
            return None
        gpus, used, evicted = got
        for pid in (*evicted, used):  # used: None for a cold start, no key
            self._scores.pop(pid, None)
        return A.StartInstance(self._new_id(model, "i"), model, gpus, prewarm_id=used, evict=tuple(evicted),
                               warm_engine=self.cfg.warm_engine)

    def _board(self, state: ClusterState) -> Board:
        return Board(state, self._scores, laminar=self.cfg.placement == "laminar", rr_cursor=self._rr_cursor,
                     rr_step=self.cfg.round_robin_step)

    # ---- routing ----------------------------------------------------------------------------------------

    def route(self, state: ClusterState, model: str, now_s: float,
              request_id=None) -> A.Route | A.StartInstance | A.ReviveInstance | None:
        """Where one request goes (§5, with this project's arbitration): the ready instance with the fewest
        in-flight requests, when below B (``routed_capacity``: no more than route_cap_per_instance) and the prefill
        backlog within the budget of the ready ones (a burst of long prompts does not wait for the tick's 5 s
        average); else a draining instance revived; else a new one (one creation in flight per model, and none
        while another model waits with no instance at all: the tick gives GPUs in order of unmet demand, so GPUs
        freed for a model that waited longer are not taken here by another's request; nor on GPUs reclaimed for
        another model); else, while the new one starts or when there is no GPU for one, the least-loaded ready
        instance takes the overflow, up to ``route_cap_per_instance`` and its engine's ``max_seqs``; else None."""
        self._model(model)
        of_model = self._instances_of(state).get(model, ())  # read once: nothing below changes the instances
        insts = [i for i in of_model if not i.draining]
        ready = [i for i in insts if i.ready]
        # a co-served instance's route cap is its equal part of its host's KV; the colocation's instances hold
        # shares by demand, and route as `shared` does while it stands
        co_ids = self._co.ids if self._co is not None and not self._pinned else ()

        def lim(inst, cap):  # requests ``inst`` may hold: ``cap``, routed_capacity (found in review: the operator's
            # cap applied to the overflow alone let each instance take B), a co-served one no more than its KV share
            b = min(cap, inst.max_seqs or math.inf)  # nor what its engine runs at once
            if inst.instance_id not in co_ids:
                return b
            own = self._colocated_cap(inst)
            return min(b, self._co.route_cap(state, model, inst) if own is None else own)

        cap_b, cap_inf = self.routed_capacity(self.cfg.instance_capacity), self.routed_capacity(math.inf)
        room = [i for i in ready if i.in_flight < lim(i, cap_b)]
        best = room[0] if len(room) == 1 else min(room, key=self._least_loaded, default=None)  # one: no sort key
        budget = self.prefill_budget_s(model) if self.cfg.route_prefill_overflow else 0.0
        # the budget leaves out the arriving request's own prefill (one profiled p), which the backlog counts too
        if best is not None and not (budget > 0 and self._prefill_backlog_s(state, model, insts)
                                     > budget * len(ready) + self.models[model].prefill_s):
            return A.Route(model, best.instance_id, request_id)
        for inst in of_model:  # a draining instance before a new one
            # not one the tick stopped for another's sake, nor a co-served one retired for a dedicated one (the
            # tick's revive skips both; found in review: route() revived it and the next tick stopped it again)
            if inst.draining and inst.ready and inst.instance_id not in self._preempted \
                    and inst.instance_id not in co_ids:
                self._retain.pop(inst.instance_id, None)
                return A.ReviveInstance(inst.instance_id)
        cap = self.cfg.max_instances_per_model
        if all(i.ready for i in insts) and (not cap or len(insts) < cap):
            if not insts and self._co is not None and self._co.could_join(state, model):
                # a host's spare room, not idle GPUs: no model waiting for GPUs loses anything by it
                act = self._co_join(state, self._board(state), model)
                if act is not None:
                    return act
            if self._idle_group(state, now_s, self.models[model].tp) and not self._someone_starving(state, model):
                act = self._start_outside_reservations(state, self._board(state), model)
                if act is not None:
                    return act
        over = [i for i in ready if i.in_flight < lim(i, cap_inf)]  # overflow, bar a co-served instance's cap
        best = over[0] if len(over) == 1 else min(over, key=self._least_loaded, default=None)
        return None if best is None else A.Route(model, best.instance_id, request_id)

    def _someone_starving(self, state: ClusterState, model: str) -> bool:
        """Whether a model other than ``model`` has requests waiting and no instance (not even a starting one), and
        could ever start one (found in review: one whose tp or shard fits no server kept every other model's first
        request waiting for a tick). ``unservable`` is computed only once a waiting model is found."""
        by_model = self._instances_of(state)
        never = None
        for m, q in state.queues.items():
            if q and m != model and not any(not i.draining for i in by_model.get(m, ())):
                never = state.unservable() if never is None else never  # once, and only here
                if m not in never:
                    return True
        return False

    def _membership(self, state: ClusterState) -> tuple:
        """Changes whenever an instance is added or removed (ids are unique and dicts keep insertion order) or a
        GPU joins (a lost GPU only takes room away, which the caches below stay right about)."""
        return id(state.instances), len(state.instances), next(reversed(state.instances), None), len(state.gpus)

    def _instances_of(self, state: ClusterState) -> dict[str, list[InstanceState]]:
        """Instances per model (their fields are read live; only the membership is cached)."""
        key = self._membership(state)
        if key != self._index_key:
            by_model: dict[str, list[InstanceState]] = {}
            busy: set[int] = set()
            for inst in state.instances.values():
                by_model.setdefault(inst.model, []).append(inst)
                busy.update(inst.gpus)
            self._index_key, self._index = key, (by_model, busy)
        return self._index[0]

    def _idle_group(self, state: ClusterState, now_s: float, tp: int) -> bool:
        """Whether some server has tp GPUs with no instance: without them a start is impossible, and route()
        skips building a Board (the costly part when a model is at capacity on a full cluster)."""
        key = self._membership(state)
        if self._no_room is not None and self._no_room[0] == key and tp >= self._no_room[1]:
            return False
        self._instances_of(state)
        busy = self._index[1]
        for srv in state.servers:
            if sum(1 for g in srv.gpu_ids if g not in busy) >= tp:
                return True
        self._no_room = (key, tp)
        return False

    # ---- the periodic decision --------------------------------------------------------------------------

    def tick(self, state: ClusterState, now_s: float) -> list:
        """Autoscale, set KV targets and (when due) plan prewarms. Returns actions to apply in order."""
        self._fits_left = FITS_PER_TICK
        out = self._tick(state, now_s)
        self.fit_ahead(self.window_of(now_s))
        return out

    def _tick(self, state: ClusterState, now_s: float) -> list:
        out: list = []
        avg5 = self._record(state, now_s)
        if self.cfg.colocate_when_oversubscribed:
            pinned = self._colocation(state, now_s, avg5)
            if pinned is not None:
                return pinned
        board = self._board(state)
        if self.cfg.prewarm and self.cfg.retain_stopped:
            self._retain_drained(state, now_s, board, out)
        self._autoscale(state, now_s, avg5, board, out)
        if self.cfg.prewarm and self.cfg.defragment:
            self._defragment(state, now_s, board, out)
        deferred = [] if self.cfg.kv_shrink_on_demand else None
        self._kv_targets(state, board, out, deferred)
        window = self.window_of(now_s)
        if self.cfg.prewarm and (window != self._plan_window or now_s - self._plan_s >= self.cfg.replan_s):
            self._plan_window, self._plan_s = window, now_s
            mark = len(out)
            self._plan(state, window, board, out)
            if deferred:  # unmapped before the prewarms that use the room load
                out[mark:mark] = self._shrinks_placed(deferred, board)
        return out

    def _keep_weights(self, instance_id: str, model: str, gpus, board: Board, out: list) -> None:
        """A stopped instance's GPUs are idle: keep its weights there as a prewarm (the next scale-out of the
        model is a hit instead of a cold load). Scored as the model's first replica; the next plan rescores it.
        The Prewarm names the instance (``kept_from``): the driver keeps the weights it left, with no copy."""
        pid = self._new_id(model, "p")
        score = self.models[model].cold_start_s
        if board.place_at(pid, model, gpus, score):
            self._scores[pid] = score
            self._kept.add(pid)
            out.append(A.Prewarm(pid, model, tuple(gpus), score, kept_from=instance_id))

    def _retain_drained(self, state: ClusterState, now_s: float, board: Board, out: list) -> None:
        for iid in sorted(self._retain):
            model, gpus, t = self._retain[iid]
            if iid in state.instances:
                if now_s - t > self.cfg.retain_wait_s:  # drains too long: the plan decides instead
                    del self._retain[iid]
                continue
            del self._retain[iid]
            if any(state.gpus[g].gone for g in gpus):
                continue  # it was lost with its GPUs, not drained: no weights are left to keep
            self._keep_weights(iid, model, gpus, board, out)

    def _autoscale(self, state: ClusterState, now_s: float, avg5: dict, board: Board, out: list) -> None:
        """§5 scaling, with GPUs arbitrated by unmet demand: draining instances are revived before new ones
        start; new ones go one at a time to the model whose demand is least met (then the longest starved); a
        quiet model's last instance stops only when another model wants GPUs that are not free, once it has been
        quiet last_instance_hold_s unless over-subscribed (``last_instance_for_groups``: where its GPUs complete a
        group such a model lacks); a model left short takes GPUs from instances whose models stay at least as well
        served (``arbitration.reclaim_victims``), and one that waits with no instance and finds none there takes
        those of instances that served preempt_after_s (time-sharing)."""
        cfg = self.cfg
        active: dict[str, list[InstanceState]] = {m: [] for m in self.models}
        draining: dict[str, list[InstanceState]] = {m: [] for m in self.models}
        for inst in state.instances.values():
            (draining if inst.draining else active)[inst.model].append(inst)
        self._preempted &= state.instances.keys()
        want_out: dict[str, int] = {}
        keep: dict[str, int] = {}
        demand: dict[str, float] = {}
        raw: dict[str, tuple[float, float]] = {}  # the demand figures without the floor for waiting requests
        o_now: dict[str, float] = {}
        held: dict[str, int] = {}  # instances kept for recurring bursts while no other model wants GPUs
        for m in sorted(self.models):
            pf_now = self._prefill_backlog_s(state, m, active[m])
            pf = self._load_avg(m, now_s, pf_now, self._prefill_load)
            queued = state.queued(m)
            o, k = self._wanted(m, avg5[m], pf, queued, self._keep_avg.get(m, 0.0))  # _keep_avg: scale_in_window_s
            if cfg.scale_in_floor_now or cfg.scale_out_now or cfg.scale_in_hold_s > 0:
                now_out, now_keep = self._wanted(m, 0.0, pf_now, 0)  # what the backlog of this moment needs
                if cfg.scale_in_floor_now:  # never scale in below it
                    k = max(k, now_keep)
                if cfg.scale_out_now:  # scale out to it (applied below)
                    o_now[m] = now_out
                if cfg.scale_in_hold_s > 0:  # nor, while no other model wants GPUs, below the recent peak of both
                    held[m] = math.ceil(self._held_need(m, now_s, max(o, now_out)))
            raw[m] = self._wanted(m, avg5[m], pf, 0)
            if avg5[m] > 0 or pf_now > 0 or queued:
                self._busy_s[m] = now_s
            n = len(active[m])
            target = math.ceil(o) if o > n else n  # a trigger is "load above 0.8 of what n instances carry"
            if cfg.max_instances_per_model:
                target = min(target, cfg.max_instances_per_model)
            want_out[m], keep[m], demand[m] = target, math.ceil(k), o
            if queued and not any(i.ready for i in active[m]):
                self._starved_since.setdefault(m, now_s)
            else:
                self._starved_since.pop(m, None)
        co = self._co
        if co is not None:  # co-serving's view of the loads; a host over its TPOT target splits a model out
            co.forget_stale(now_s)
            fc = self._window_forecast(now_s)
            co.update(state, {m: r[0] for m, r in raw.items()}, {m: r[1] for m, r in raw.items()},
                      {m: max(avg5[m], fc.get(m, 0.0)) for m in self.models})
            out.extend(co.dedications(state))  # alone on its host and outgrown: dedicated in place, nothing starts
            co.split(state, active, want_out)
            for m in co.splitting:  # it asks for one dedicated instance more than it runs, whatever its load
                demand[m] = max(demand[m], want_out[m])
        self._release_reservations(state, active, want_out)  # after the split raised a splitting model's want
        # the backlog of now, where every model with demand has GPUs of its own (over-subscribed, it set models
        # taking GPUs from one another: paper-conv, 12 models at x0.5, seed 2). GPUs reserved for a model were
        # released above on its averaged demand: the backlog of now does not hold them.
        if o_now and not (co is not None and co.oversubscribed):
            cap = cfg.max_instances_per_model or math.inf
            for m, o in o_now.items():
                if o > max(demand[m], len(active[m])):
                    demand[m] = o
                    want_out[m] = max(want_out[m], min(math.ceil(o), cap))
        have = {m: len(active[m]) for m in self.models}
        for m in sorted(self.models):  # 1. revive: it still runs, so there is nothing to start or load
            for inst in sorted(draining[m], key=lambda i: (-i.in_flight, i.instance_id)):
                if have[m] >= want_out[m]:
                    break
                if inst.instance_id in self._preempted or (co is not None and inst.instance_id in co.ids):
                    continue  # a co-served instance stopped went for a dedicated one (or scaled in)
                out.append(A.ReviveInstance(inst.instance_id))
                self._retain.pop(inst.instance_id, None)
                have[m] += 1
        wanted = self._allocate(state, board, have, want_out, out)  # 2. new instances, least-met demand first
        retired = set()
        if co is not None:  # co-served instances replaced by dedicated ones (and the reverse) stop
            for inst in co.retire(state, A.stopping(out)):
                self._preempted.add(inst.instance_id)  # never revived: it would take back the GPUs a merge freed
                self._stop(state, inst, now_s, board, out)
                have[inst.model] -= 1
                retired.add(inst.instance_id)
            retired |= self._close_reopened(state, now_s, board, have, out)  # a reopened host's quiet guest
        stopped = False
        moving = {state.instances[i].model for i in self._moving if i in state.instances}
        # read once: within the loop below only a model's own stops are added, and its serving count follows them
        gone = A.stopping(out)
        starts = {a.model for a in out if type(a) is A.StartInstance}
        skip = moving | (set(co.merging) | co.splitting if co is not None else set())
        # a model no GPU can hold wants nothing of anyone (found in review: instances were stopped for it, again
        # and again, and its GPU kept reserved for nobody; so were quiet models' last instances)
        never = state.unservable() if wanted else {}
        wanted = wanted - never.keys()
        freeing = set() if not cfg.last_instance_for_groups or cfg.idle_to_zero else \
            self._groups_to_free(state, now_s, board, keep, active, wanted, skip, gone)
        hold_s = 0.0 if co is not None and co.oversubscribed else cfg.last_instance_hold_s  # why: PolicyConfig
        crowded = sum(i.tp for i in self.models.values()) > state.live_gpus()  # why not always: PolicyConfig
        starving = {w for w in wanted if w in self._starved_since} if crowded else set()
        yields = starving if cfg.forecast_keep_yields_to_starved else set()  # keeps_last's keep: why in PolicyConfig
        for m in sorted(self.models):  # 3. scale in (§5); the last instance only when GPUs are wanted
            target = keep[m] if wanted - {m} else max(keep[m], held.get(m, 0))
            recent = now_s - self._busy_s.get(m, -math.inf) < hold_s and not starving - {m}
            if target == 0 and ((not cfg.idle_to_zero and (recent or (freeing.isdisjoint(
                    g for i in active[m] for g in i.gpus) if cfg.last_instance_for_groups else not (wanted - {m}))))
                                or (co is not None and not yields - {m} and co.keeps_last(state, m, active[m]))):
                target = 1
            if co is not None and (m in co.merging or m in co.splitting):
                continue  # it runs its old instance and the one replacing it: retire() ends that once the new
                # one is ready (found in review: a split stopped the co-served instance, its only ready one, at once)
            if m in moving or m in starts:  # the same for an instance that _defragment moves, and for a model this
                continue  # tick starts instances of (found in review: scale_out_now started 6, stopped a serving one)
            old = [i for i in active[m] if i.ready and now_s - i.ready_s >= cfg.min_lifetime_s
                   and i.instance_id not in retired]
            # co-served instances first: a model that needs fewer keeps its own GPUs
            old.sort(key=lambda i: (co is None or i.instance_id not in co.ids, i.in_flight, i.instance_id))
            serving = sum(1 for i in active[m] if i.ready and i.instance_id not in gone)
            starting = any(not i.ready for i in active[m])
            for inst in old[: max(0, have[m] - target)]:
                if starting and serving <= 1:
                    # its last ready instance carries the model until a start is ready (found in review: with
                    # scale_out_now, the tick that started two instances for a backlog stopped the one serving,
                    # and every tick after it stopped it again while route() revived it)
                    break
                self._stop(state, inst, now_s, board, out)
                have[m] -= 1
                serving -= 1
                stopped |= inst.in_flight == 0
        if wanted and cfg.migrate_max_in_flight and not (co is not None and co.oversubscribed):
            need = sum(max(0, want_out[m] - have[m]) for m in wanted)
            stopped |= self._migrate(state, board, wanted, need, out)
        if stopped and wanted:  # idle GPUs were freed this tick: the wanting models may start at once
            wanted = self._allocate(state, board, have, {m: want_out[m] for m in wanted}, out)
        if co is not None:  # a model that outgrew its host and finds no GPUs: the host converts in place (its
            # co-residents move to other hosts), before merges or reclaims take GPUs from anyone for it
            for m in sorted(wanted):
                if co.outgrown(m, active[m]) and self._vacate(state, board, m, out):
                    wanted.discard(m)
        if co is not None and (wanted or cfg.consolidate):  # GPUs are wanted (or the operator wants them back:
            # consolidate): a quiet model with GPUs to itself moves onto a host
            reserved = {g for gpus in self._reserved.values() for g in gpus}
            tps = {self.models[w].tp for w in wanted}
            quiet = co.merge_candidates(state, now_s, cfg.min_lifetime_s, A.stopping(out))
            for m, iid in quiet:
                if m in wanted or (wanted and not co.frees_group_for(state, board, state.instances[iid].gpus, tps)):
                    continue
                # consolidating: a new host only for a dedicated instance, and only where another quiet dedicated
                # model of the tp could follow it there (moving alone onto other idle GPUs frees nothing: a host
                # nobody can join would move its model back and forth every min_lifetime_s)
                new_host = not wanted and iid not in co.ids and any(
                    o != m and oid not in co.ids and self.models[o].tp == self.models[m].tp
                    and co.could_pair(state, m, o) for o, oid in quiet)
                act = co.join(state, board, m, reserved, new_host=new_host, new_id=self._new_id, merge=True)
                if act is not None:
                    self._co_started([act])
                    out.append(act)
                    co.merging_into(m, iid, act.instance_id)
                    break
        if co is not None and wanted:  # a light model with no instance and no host: a light model's dedicated
            # GPUs reopen as a host for it (moves.py), before time-sharing gives it GPUs of its own
            wanted -= self._reopen_host(state, now_s, board, wanted, have, out)
        # 4. GPUs for models left short, least-met demand first: reclaimed from models that stay as well served;
        # for a model with no instance and nothing to reclaim, time-shared (a last instance may go); so for a
        # model that outgrew its host (a co-served instance holds a fixed KV share and shares its GPUs' time: it
        # is no instance of its own, and with no GPU to split out to it would queue for ever)
        board.group_scans = GroupScans(state)  # the groups each model's reclaim scans, kept between models
        for m in sorted(wanted, key=lambda m: (have[m] / demand[m], self._starved_since.get(m, math.inf), m)):
            found, freed = self._reclaim_for(state, m, now_s, have, demand, board, out)
            if not found and co is not None and co.outgrown(m, active[m]) and self._co_replica(state, board, m, out):
                continue  # one more co-served instance on another host, before taking anyone's GPUs
            if not found and ((have[m] == 0 and m in self._starved_since)
                              or (co is not None and co.outgrown(m, active[m]))):
                freed = self._preempt_for(state, m, now_s, avg5, board, out, have[m])
            if freed:
                self._allocate(state, board, have, {m: want_out[m]}, out)
        board.group_scans = None

    def _release_reservations(self, state: ClusterState, active: dict, want_out: dict) -> None:
        """GPUs freed for a model become anyone's once it has more instances than when they were freed, or no
        longer wants more (a model that had none: none of its requests waits), or one of them is lost (found in
        review: the model could never start there, and the reservation kept the live ones from every other model
        until its queue emptied). The instances stopped for it that still drain may then be revived by their own
        model."""
        gpus = state.gpus
        for m in list(self._reserved):
            n, base = len(active[m]), self._reserved_base.get(m, 0)
            if n > base or not (want_out[m] > n if n else state.queued(m)) \
                    or any(gpus[g].gone for g in self._reserved[m]):
                del self._reserved[m]
                self._reserved_base.pop(m, None)
                self._preempted -= self._preempting.pop(m, set())

    def _allocate(self, state: ClusterState, board: Board, have: dict, want: dict, out: list) -> set[str]:
        """Start instances one at a time, each to the model whose demand is least met (have / want; ties: the
        longest starved, then the most wanted); returns the models left short because no GPUs fit them."""
        return least_met_first(have, want, self._starved_since,
                               lambda m: self._start_outside_reservations(state, board, m), out)

    def _start_outside_reservations(self, state: ClusterState, board: Board, model: str,
                                    off=()) -> A.StartInstance | None:
        """``_start``, on GPUs not freed for another model: those count as busy for this choice (else the
        victims of a preemption, waiting in turn, would take back the GPUs one by one as they drain), and so do
        the GPU ids in ``off``. With co-serving, a light model's first instance joins a host (or opens one)
        instead (``coserve``)."""
        if self._co is not None and not any(not i.draining for i in self._instances_of(state).get(model, ())):
            act = self._co_join(state, board, model, new_host=True)
            if act is not None:
                return act
        held = []
        for g in self._held_for_others(model).union(off):
            loc = board.local.get(g)
            if loc is not None and not board.busy[loc]:
                board.busy[loc] = True
                held.append(loc)
        try:
            return self._start(board, model)
        finally:
            for loc in held:
                board.busy[loc] = board.inst_count[loc] > 0

    def _held_for_others(self, model: str) -> set[int]:
        """GPUs freed for models other than ``model`` (reclaim, time-sharing): co-serving places nothing there."""
        return {g for other, gpus in self._reserved.items() if other != model for g in gpus}

    def _co_started(self, acts) -> None:
        """Co-served starts decided: the prewarms they evict (or start from) leave the plan's scores."""
        for act in acts:
            for pid in (*act.evict, act.prewarm_id):
                self._scores.pop(pid, None)

    def _co_join(self, state: ClusterState, board: Board, model: str, new_host: bool = False):
        """``CoServing.join`` for ``model``, off the GPUs kept for other models (a new host only when none are)."""
        reserved = self._held_for_others(model)
        act = self._co.join(state, board, model, reserved, new_host=new_host and not reserved, new_id=self._new_id)
        self._co_started([act] if act is not None else [])
        return act

    def _co_replica(self, state: ClusterState, board: Board, model: str, out: list) -> bool:
        """``CoServing.replica`` for ``model`` (off the GPUs kept for other models); whether one starts."""
        stopping = A.stopping(out)
        act = self._co.replica(state, board, model, self._held_for_others(model), self._new_id, stopping)
        acts = [act] if act is not None else []
        self._co_started(acts)
        out.extend(acts)
        return bool(acts)

    def _vacate(self, state: ClusterState, board: Board, model: str, out: list) -> bool:
        """``CoServing.vacate`` for ``model`` (off the GPUs kept for other models); whether anything moves."""
        acts = self._co.vacate(state, board, model, self._held_for_others(model), self._new_id, A.stopping(out))
        self._co_started(acts)
        out.extend(acts)
        return bool(acts)

    def _stop(self, state: ClusterState, inst: InstanceState, now_s: float, board: Board, out: list) -> None:
        """Stop ``inst``; one with nothing in flight frees its GPUs on the board at once (the driver stops it
        when it applies the action), where its weights stay as a prewarm when the policy keeps them."""
        out.append(A.StopInstance(inst.instance_id))
        retain = self.cfg.prewarm and self.cfg.retain_stopped
        if inst.in_flight == 0:
            board.stop_instance(inst.gpus)
            if self._co is not None:  # its GPUs are idle on the board: no host for this tick's joins
                self._co.stopped_idle.add(inst.instance_id)
            if retain:
                self._keep_weights(inst.instance_id, inst.model, inst.gpus, board, out)
        elif retain:
            self._retain[inst.instance_id] = (inst.model, tuple(inst.gpus), now_s)

    def _plan(self, state: ClusterState, window: int, board: Board, out: list) -> None:
        B = self.routed_capacity()  # replicas for the instances scale-out will start (route_cap_per_instance)
        stopping, revived = A.stopping(out), {a.instance_id for a in out if type(a) is A.ReviveInstance}
        # this tick's starts and revivals run too (found in review: a scale-out's hit was planned again)
        running = Counter(a.model for a in out if type(a) is A.StartInstance)
        running.update(i.model for i in state.instances.values()
                       if (not i.draining or i.instance_id in revived) and i.instance_id not in stopping)
        existing: dict[str, list] = {}
        for r in board.reps.values():
            existing.setdefault(r.model, []).append(r)
        self._forget_gone(board)
        todo = []
        f_avg, f_peak = self.forecast_all(window)
        for k, m in enumerate(sorted(self.models)):
            info = self.models[m]
            avg, peak = float(f_avg[k]), float(f_peak[k])
            cands = [] if math.isnan(avg) else plan_model(m, avg, peak, running[m], B, info.cold_start_s)
            if self.cfg.max_instances_per_model:  # a replica past the cap never becomes an instance (found in review)
                cands = cands[:max(0, self.cfg.max_instances_per_model - running[m])]
            have = sorted(existing.get(m, []), key=lambda r: (not r.loaded, -r.score, r.prewarm_id))
            for c, r in zip(cands, have):
                board.rescore(r.prewarm_id, c.score)
                self._scores[r.prewarm_id] = c.score
            for r in have[len(cands):]:
                # keep it until its room is wanted: it costs nothing, and may still be hit (a stopped instance's
                # weights count as loaded: a driver that reloads them pays little, one that keeps them nothing)
                if r.loaded or r.prewarm_id in self._kept:
                    board.rescore(r.prewarm_id, 0.0)
                    self._scores[r.prewarm_id] = 0.0
                else:
                    board.remove(r.prewarm_id)
                    self._scores.pop(r.prewarm_id, None)
                    out.append(A.CancelPrewarm(r.prewarm_id))
            todo.extend(cands[len(have):])
        todo.sort(key=lambda c: (-c.score, c.model, c.rank))
        # A model's placement that failed is not tried again at a score no higher while the board is unchanged: the
        # board would refuse it too (the groups free of eviction do not depend on the score, and a failed eviction
        # search is remembered for lower scores, ``Board._evict_failed``), so this skips only the work. Found in
        # review: a forecast of 1e7 in flight (a history in the wrong unit) tried its 312k candidates one by one,
        # a 9 s tick. Each still draws its id, so the ids of the plan, and every seeded figure, are as before.
        failed_at: dict[str, int] = {}
        for c in todo:
            pid = self._new_id(c.model, "p")
            if failed_at.get(c.model) == board.version:
                continue
            got = board.place(pid, c.model, c.score, evict=self.cfg.evict_for_placement)
            if got is None:
                failed_at[c.model] = board.version
                continue
            gpus, evicted = got
            for e in evicted:
                self._scores.pop(e, None)
                out.append(A.Evict(e, "placement"))
            self._scores[pid] = c.score
            out.append(A.Prewarm(pid, c.model, gpus, c.score))
        self._rr_cursor = board.rr_cursor
