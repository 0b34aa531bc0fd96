"""The policy object a driver calls: route on arrival, tick every second or so (see the package docstring)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

import numpy as np

from warmserve.errors import InvalidArgumentError, UnknownModelError
from warmserve.policy import actions as A
from warmserve.policy.concurrency import WindowMeter
from warmserve.policy.config import PolicyConfig
from warmserve.policy.forecast import ModelForecaster, paper_next_batch
from warmserve.policy.placement import Board
from warmserve.policy.planner import plan_model
from warmserve.policy.state import ClusterState, InstanceState, ModelInfo

POLICY_NAMES = ("warmserve", "autoscale", "shared", "dedicated", "no-kv-reservation", "round-robin-placement",
                "reactive")

_PRESETS: dict[str, dict] = {
    "warmserve": {},
    "autoscale": dict(prewarm=False, kv_reservation=False, warm_engine=False),
    "no-kv-reservation": dict(kv_reservation=False),
    "round-robin-placement": dict(placement="round-robin", evict_for_placement=False),
    "reactive": dict(forecast=False),
    "shared": dict(prewarm=False, kv_reservation=False),
    "dedicated": dict(prewarm=False, kv_reservation=False),
}


class _History:
    """Average and peak per model and window index (a models x windows matrix), NaN where missing."""

    def __init__(self, names: list[str]):
        self.index = {m: i for i, m in enumerate(names)}
        self.avg = np.full((len(names), 0), np.nan)
        self.peak = np.full((len(names), 0), np.nan)
        self.known = np.full(len(names), -1)  # highest window index observed per model

    def ensure(self, n: int) -> None:
        if n > self.avg.shape[1]:
            cap = max(n, 2 * self.avg.shape[1])
            for name in ("avg", "peak"):
                old = getattr(self, name)
                a = np.full((old.shape[0], cap), np.nan)
                a[:, : old.shape[1]] = old
                setattr(self, name, a)

    def set(self, model: str, i: int, avg: float, peak: float) -> None:
        self.ensure(i + 1)
        r = self.index[model]
        self.avg[r, i], self.peak[r, i] = avg, peak
        self.known[r] = max(self.known[r], i)


class Policy:
    """WarmServe's policy and its ablations; the static baselines subclass it."""

    def __init__(self, name: str, models: list[ModelInfo], config: PolicyConfig, history=None):
        self.name = name
        self.cfg = config
        self.models = {m.name: m for m in models}
        self.period = max(1, round(86400 / config.window_s))
        self._hist = _History(sorted(self.models))
        self._fc = {m: (ModelForecaster(config.forecaster, self.period, n_resid=config.residual_windows),
                        ModelForecaster(config.forecaster, self.period, n_resid=config.residual_windows))
                    for m in self.models}
        self._load: dict[str, deque] = {m: deque() for m in self.models}
        self._meters: dict[str, WindowMeter] = {}
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

    # ---- inputs -----------------------------------------------------------------------------------------

    def _model(self, model: str) -> ModelInfo:
        m = self.models.get(model)
        if m is None:
            raise UnknownModelError(f"model {model!r} is not served; known: {sorted(self.models)}", model=model)
        return m

    def observe_window(self, model: str, window_start_s: float, avg_concurrency: float, peak_concurrency: float) -> None:
        """Record one window's time-weighted average and peak in-flight requests (NaN: missing)."""
        self._model(model)
        i = math.floor(window_start_s / self.cfg.window_s + 1e-9)
        if i < 0:
            raise InvalidArgumentError(f"window_start_s must be >= 0, got {window_start_s}")
        self._hist.set(model, i, avg_concurrency, peak_concurrency)

    def load_history(self, model: str, window_start_s, avg_concurrency, peak_concurrency) -> None:
        """``observe_window`` for many windows at once (equal-length arrays)."""
        self._model(model)
        starts, avg, peak = (np.asarray(x, dtype=np.float64).reshape(-1) for x in
                             (window_start_s, avg_concurrency, peak_concurrency))
        if not (len(starts) == len(avg) == len(peak)):
            raise InvalidArgumentError(
                f"history of {model!r}: {len(starts)} starts, {len(avg)} averages and {len(peak)} peaks differ")
        if len(starts) == 0:
            return
        idx = np.floor(starts / self.cfg.window_s + 1e-9).astype(np.int64)
        if idx.min() < 0:
            raise InvalidArgumentError(f"history of {model!r}: window starts must be >= 0, got {starts.min()}")
        h = self._hist
        h.ensure(int(idx.max()) + 1)
        r = h.index[model]
        h.avg[r, idx], h.peak[r, idx] = avg, peak
        h.known[r] = max(h.known[r], int(idx.max()))

    def _meter_set(self, model: str, now_s: float, value: float) -> None:
        meter = self._meters.get(model)
        if meter is None:
            self._meters[model] = WindowMeter(self.cfg.window_s, now_s, value)
            return
        for start, avg, peak in meter.set(now_s, value):
            self.observe_window(model, start, avg, peak)

    def on_request_start(self, model: str, now_s: float) -> None:
        """A request of ``model`` arrived (optional; gives exact window peaks)."""
        self._model(model)
        self._exact = True
        self._inflight[model] += 1
        self._meter_set(model, now_s, self._inflight[model])

    def on_request_done(self, model: str, now_s: float) -> None:
        """A request of ``model`` finished or was dropped."""
        self._model(model)
        self._exact = True
        self._inflight[model] = max(0, self._inflight[model] - 1)
        self._meter_set(model, now_s, self._inflight[model])

    # ---- helpers ----------------------------------------------------------------------------------------

    def _new_id(self, model: str, kind: str) -> str:
        self._n += 1
        return f"{model}/{kind}{self._n}"

    def _load_avg(self, model: str, now_s: float, value: float) -> float:
        """Time-weighted mean of the sampled load over the last load_window_s (a step function)."""
        q = self._load[model]
        if not q or q[-1][1] != value:  # a step function: an unchanged value needs no new sample
            q.append((now_s, value))
        lo = now_s - self.cfg.load_window_s
        while len(q) > 1 and q[1][0] <= lo:
            q.popleft()
        t_prev, v_prev = q[0]
        start = max(t_prev, lo)
        if len(q) == 1 or now_s <= start:
            return value
        # only the oldest sample can start before the window (the loop above drops the others)
        area, t_prev = 0.0, start
        for i in range(1, len(q)):
            t, v = q[i]
            area += v_prev * (t - t_prev)
            t_prev, v_prev = t, v
        area += v_prev * (now_s - t_prev)  # the last value holds until now
        return area / (now_s - start)

    def forecast(self, model: str, window_index: int) -> tuple[float, float]:
        """(avg, peak) forecast of window ``window_index`` from the windows before it (NaN: no data)."""
        a, p = self.forecast_all(window_index, [model])
        return float(a[0]), float(p[0])

    def forecast_all(self, window_index: int, models: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(avg, peak) forecasts of window ``window_index`` for ``models`` (default: all, sorted); NaN where a
        model has no data. The peak forecast is never below the average one."""
        h = self._hist
        names = sorted(self.models) if models is None else models
        rows = np.array([h.index[m] for m in names], dtype=np.int64)
        avg, peak = np.full(len(names), np.nan), np.full(len(names), np.nan)
        known = h.known[rows]
        has = (known >= 0) & (window_index > 0)
        if not has.any():
            return avg, peak
        h.ensure(window_index)
        if not self.cfg.forecast:  # the reactive ablation: the last window seen stands for the next one
            j = np.minimum(known, window_index - 1)
            avg[has], peak[has] = h.avg[rows[has], j[has]], h.peak[rows[has], j[has]]
        elif self.cfg.forecaster == "paper":
            n = self.cfg.residual_windows
            avg[has] = paper_next_batch(h.avg[rows[has], :window_index], self.period, n)
            peak[has] = paper_next_batch(h.peak[rows[has], :window_index], self.period, n)
        else:
            for k in np.nonzero(has)[0]:
                fa, fp = self._fc[names[k]]
                avg[k] = fa.predict(h.avg[rows[k], :window_index])
                peak[k] = fp.predict(h.peak[rows[k], :window_index])
        with np.errstate(invalid="ignore"):
            peak = np.where(np.isnan(peak), peak, np.fmax(peak, avg))
        return avg, peak

    def _start(self, board: Board, model: str) -> A.StartInstance | None:
        got = board.choose_for_instance(model)
        if got is None:
            return None
        gpus, used, evicted = got
        for pid in evicted:
            self._scores.pop(pid, None)
        if used is not None:
            self._scores.pop(used, None)
        return A.StartInstance(self._new_id(model, "i"), model, gpus, prewarm_id=used, evict=tuple(evicted),
                               warm_engine=self.cfg.warm_engine)

    def _board(self, state: ClusterState) -> Board:
        return Board(state, self._scores, laminar=self.cfg.placement == "laminar", rr_cursor=self._rr_cursor,
                     rr_step=self.cfg.round_robin_step)

    # ---- routing ----------------------------------------------------------------------------------------

    def route(self, state: ClusterState, model: str, now_s: float, request_id=None) -> A.Route | A.StartInstance | None:
        """Where one request goes: the ready instance with the fewest in-flight requests below B; else a new
        instance (one creation in flight per model; the request waits for it); else None (it waits)."""
        self._model(model)
        B = self.cfg.instance_capacity
        insts = [i for i in self._instances_of(state).get(model, ()) if not i.draining]
        ready = [i for i in insts if i.ready]
        best = min(ready, key=lambda i: (i.in_flight, i.instance_id), default=None)
        if best is not None and best.in_flight < B:
            return A.Route(model, best.instance_id, request_id)
        if any(not i.ready for i in insts):
            return None
        cap = self.cfg.max_instances_per_model
        if (not cap or len(insts) < cap) and self._idle_group(state, now_s, self.models[model].tp):
            act = self._start(self._board(state), model)
            if act is not None:
                return act
        # No GPU for another instance: overload the least-loaded one rather than leave the request waiting.
        return A.Route(model, best.instance_id, request_id) if best is not None else None

    def _membership(self, state: ClusterState) -> tuple:
        """Changes whenever an instance is added or removed (ids are unique and dicts keep insertion order)."""
        return id(state.instances), len(state.instances), next(reversed(state.instances), None)

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
        out: list = []
        avg5 = self._record(state, now_s)
        board = self._board(state)
        if self.cfg.prewarm and self.cfg.retain_stopped:
            self._retain_drained(state, now_s, board, out)
        self._autoscale(state, now_s, avg5, board, out)
        self._kv_targets(state, board, out)
        window = math.floor(now_s / self.cfg.window_s)
        if self.cfg.prewarm and (window != self._plan_window or now_s - self._plan_s >= self.cfg.replan_s):
            self._plan_window, self._plan_s = window, now_s
            self._plan(state, window, board, out)
        return out

    def _keep_weights(self, model: str, gpus, board: Board, out: list) -> None:
        """A stopped instance's GPUs are idle: keep its weights there as a prewarm (the next scale-out of the
        model is a hit instead of a cold load). Scored as the model's first replica; the next plan rescores it.
        Drivers execute it as an ordinary Prewarm (one that reloads from host memory pays that copy off the
        request path)."""
        pid = self._new_id(model, "p")
        score = self.models[model].cold_start_s
        if board.place_at(pid, model, gpus, score):
            self._scores[pid] = score
            self._kept.add(pid)
            out.append(A.Prewarm(pid, model, tuple(gpus), score))

    def _retain_drained(self, state: ClusterState, now_s: float, board: Board, out: list) -> None:
        for iid in sorted(self._retain):
            model, gpus, t = self._retain[iid]
            if iid in state.instances:
                if now_s - t > self.cfg.retain_wait_s:  # drains too long: the plan decides instead
                    del self._retain[iid]
                continue
            del self._retain[iid]
            self._keep_weights(model, gpus, board, out)

    def _record(self, state: ClusterState, now_s: float) -> dict[str, float]:
        """Sample the load (for autoscaling) and the concurrency (for forecast windows); returns the 5 s loads."""
        load = {m: 0 for m in self.models}
        seen = {m: 0 for m in self.models}
        for inst in state.instances.values():
            seen[inst.model] += inst.in_flight
            if not inst.draining:
                load[inst.model] += inst.in_flight
        for m, q in state.queued.items():
            if m in load:
                load[m] += q
                seen[m] += q
        avg5 = {m: self._load_avg(m, now_s, load[m]) for m in sorted(self.models)}
        if not self._exact:
            for m in sorted(self.models):
                self._meter_set(m, now_s, seen[m])
        else:
            for m in sorted(self._meters):
                self._meter_set(m, now_s, self._inflight[m])
        return avg5

    def _autoscale(self, state: ClusterState, now_s: float, avg5: dict, board: Board, out: list) -> None:
        B = self.cfg.instance_capacity
        by_model: dict[str, list[InstanceState]] = {m: [] for m in self.models}
        for inst in state.instances.values():
            if not inst.draining:
                by_model[inst.model].append(inst)
        for m in sorted(self.models):
            active, load = by_model[m], avg5[m]
            cap = len(active) * B
            if load > self.cfg.scale_out_threshold * cap:
                target = math.ceil(load / self.cfg.scale_out_threshold / B)
                if self.cfg.max_instances_per_model:
                    target = min(target, self.cfg.max_instances_per_model)
                for _ in range(target - len(active)):
                    act = self._start(board, m)
                    if act is None:
                        break
                    out.append(act)
            elif load < self.cfg.scale_in_threshold * cap:
                target = math.ceil(load / self.cfg.scale_in_threshold / B)
                if state.queued.get(m, 0) > 0:
                    target = max(target, 1)
                old = [i for i in active if i.ready and now_s - i.ready_s >= self.cfg.min_lifetime_s]
                old.sort(key=lambda i: (i.in_flight, i.instance_id))
                for inst in old[: max(0, len(active) - target)]:
                    out.append(A.StopInstance(inst.instance_id))
                    if not (self.cfg.prewarm and self.cfg.retain_stopped):
                        continue
                    if inst.in_flight == 0:  # the driver frees its GPUs at once
                        board.stop_instance(inst.gpus, min(state.gpus[g].total_bytes for g in inst.gpus))
                        self._keep_weights(m, inst.gpus, board, out)
                    else:
                        self._retain[inst.instance_id] = (m, tuple(inst.gpus), now_s)

    def kv_free_target(self, inst: InstanceState) -> int:
        """Free KV blocks to keep mapped (§6): total * in_flight / B, at least min_free_kv_blocks; everything
        when KV reservation is off."""
        if not self.cfg.kv_reservation:
            return max(0, inst.kv_blocks_total - inst.kv_blocks_used)
        want = math.ceil(inst.kv_blocks_total * inst.in_flight / self.cfg.instance_capacity)
        return max(0, min(max(want, self.cfg.min_free_kv_blocks), inst.kv_blocks_total - inst.kv_blocks_used))

    def _kv_targets(self, state: ClusterState, board: Board, out: list) -> None:
        stopping = {a.instance_id for a in out if isinstance(a, A.StopInstance)}
        for iid in sorted(state.instances):
            inst = state.instances[iid]
            if not inst.ready or inst.draining or iid in stopping or inst.kv_blocks_total <= 0:
                continue
            block = self.models[inst.model].kv_block_bytes
            free = self.kv_free_target(inst)
            delta = inst.kv_blocks_used + free - inst.kv_blocks_mapped
            if delta > 0:  # load rose: take pages back, evicting the lowest-score prewarms on these GPUs first
                can = min(self._room_blocks(board, g, block) for g in inst.gpus)
                delta = min(delta, can)
                free = inst.kv_blocks_mapped + delta - inst.kv_blocks_used
                for g in inst.gpus:
                    for pid in board.take_bytes(g, delta * block) or []:
                        self._scores.pop(pid, None)
                        out.append(A.Evict(pid, "kv"))
            elif delta < 0:
                board.release_instance(inst.gpus, -delta * block)
            if delta != 0 or inst.kv_free_target != free:
                out.append(A.SetKvTarget(iid, max(free, 0)))

    @staticmethod
    def _room_blocks(board: Board, gpu: int, block: int) -> int:
        s, k = board.local[gpu]
        room = int(board.free[s, k]) + sum(r.shard_bytes for r in board.by_server[s].values() if r.mask >> k & 1)
        return max(0, room // block)

    def _plan(self, state: ClusterState, window: int, board: Board, out: list) -> None:
        B = self.cfg.instance_capacity
        running = {m: 0 for m in self.models}
        stopping = {a.instance_id for a in out if isinstance(a, A.StopInstance)}
        for inst in state.instances.values():
            if not inst.draining and inst.instance_id not in stopping:
                running[inst.model] += 1
        existing: dict[str, list] = {}
        for r in board.reps.values():
            existing.setdefault(r.model, []).append(r)
        self._kept &= board.reps.keys()
        todo = []
        f_avg, f_peak = self.forecast_all(window)
        for k, m in enumerate(sorted(self.models)):
            info = self.models[m]
            avg, peak = float(f_avg[k]), float(f_peak[k])
            cands = [] if math.isnan(avg) else plan_model(m, avg, peak, running[m], B, info.cold_start_s)
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
        for c in todo:
            pid = self._new_id(c.model, "p")
            got = board.place(pid, c.model, c.score, evict=self.cfg.evict_for_placement)
            if got is None:
                continue
            gpus, evicted = got
            for e in evicted:
                self._scores.pop(e, None)
                out.append(A.Evict(e, "placement"))
            self._scores[pid] = c.score
            out.append(A.Prewarm(pid, c.model, gpus, c.score))
        self._rr_cursor = board.rr_cursor


class StaticPolicy(Policy):
    """`dedicated` (fixed GPU groups per model) and `shared` (every model resident, fixed KV shares)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._placed = False

    def route(self, state: ClusterState, model: str, now_s: float, request_id=None):
        self._model(model)
        ready = [i for i in state.instances.values() if i.model == model and i.ready and not i.draining]
        best = min(ready, key=lambda i: (i.in_flight, i.instance_id), default=None)
        return None if best is None else A.Route(model, best.instance_id, request_id)

    def tick(self, state: ClusterState, now_s: float) -> list:
        self._record(state, now_s)
        if self._placed:
            return []
        self._placed = True
        return self._layout(state, now_s)

    def _demand(self) -> dict[str, float]:
        """Mean peak over the history, 1 where there is none: how the static layouts share the GPUs."""
        out = {}
        for m, r in self._hist.index.items():
            v = self._hist.peak[r]
            v = v[~np.isnan(v)]
            out[m] = float(v.mean()) if len(v) and v.mean() > 0 else 1.0
        return out

    def _layout(self, state: ClusterState, now_s: float) -> list:
        board = Board(state, laminar=True)
        demand = self._demand()
        order = sorted(self.models, key=lambda m: (-self.models[m].tp, -demand[m], m))
        out: list = []
        if self.name == "dedicated":
            count = {m: 0 for m in self.models}
            for m in order:  # one instance each first, biggest tp first so groups pack
                act = self._start(board, m)
                if act is not None:
                    out.append(act)
                    count[m] += 1
            while True:  # then the rest to whichever model has the most demand per instance
                ranked = sorted(self.models, key=lambda m: (-demand[m] / max(count[m], 1) if count[m] else -math.inf, m))
                added = False
                for m in ranked:
                    if count[m] == 0:
                        continue
                    act = self._start(board, m)
                    if act is not None:
                        out.append(act)
                        count[m] += 1
                        added = True
                        break
                if not added:
                    return out
        return self._shared_layout(state, board, order, demand)

    def _shared_layout(self, state: ClusterState, board: Board, order: list[str], demand: dict) -> list:
        """MuxServe-like static colocation. Every GPU is used: each tp class gets tp-GPU groups in proportion to
        its demand x tp (largest remainder, then whatever still fits). Each group hosts at least two of its class's
        models where the class has several (more when there are more models than groups, weights up to 80% of
        memory); popular models get more replicas, spread so that group loads even out, and the memory the
        weights leave is split among a group's models in proportion to their demand per replica."""
        n_gpus = int((board.gpu_ids >= 0).sum())
        classes: dict[int, list[str]] = {}
        for m in order:
            classes.setdefault(self.models[m].tp, []).append(m)
        weight = {tp: sum(demand[m] * tp for m in ms) for tp, ms in classes.items()}
        total = sum(weight.values())
        quota = {tp: n_gpus * weight[tp] / total for tp in classes}
        groups: dict[int, list[tuple[int, ...]]] = {tp: [] for tp in classes}

        def take(tp: int) -> bool:
            pick = board.choose_for_instance(classes[tp][0])
            if pick is None:
                return False
            groups[tp].append(pick[0])
            return True

        for tp in sorted(classes, reverse=True):  # big groups first, so they find whole blocks
            for _ in range(max(1, int(quota[tp] // tp))):
                if not take(tp):
                    break
        while True:  # the GPUs left: to the class furthest below its share that still fits
            ranked = sorted(classes, key=lambda tp: (-(quota[tp] - len(groups[tp]) * tp) / tp, -tp))
            if not any(take(tp) for tp in ranked):
                break
        out: list = []
        gpu_bytes = min(g.total_bytes for g in state.gpus)
        for tp, ms in classes.items():
            gs = groups[tp]
            if not gs:
                continue
            per_group = max(min(2, len(ms)), math.ceil(len(ms) / len(gs)))
            slots = min(len(gs) * per_group, len(gs) * len(ms))
            reps = {m: 1 for m in ms}  # every model once, the rest of the slots by demand (largest remainder)
            d_total = sum(demand[m] for m in ms)
            for _ in range(max(0, slots - len(ms))):
                m = max((m for m in ms if reps[m] < len(gs)),
                        key=lambda m: (demand[m] / d_total * slots - reps[m], m), default=None)
                if m is None:
                    break
                reps[m] += 1
            hosted: list[list[str]] = [[] for _ in gs]
            load = [0.0] * len(gs)
            room = [0.8 * gpu_bytes] * len(gs)  # weights may take at most this much, the rest is KV
            todo = sorted(((demand[m] / reps[m], m) for m in ms for _ in range(reps[m])), key=lambda x: (-x[0], x[1]))
            for d, m in todo:
                fits = [k for k in range(len(gs)) if m not in hosted[k] and len(hosted[k]) < per_group
                        and self.models[m].shard_bytes <= room[k]]
                if not fits:
                    continue
                k = min(fits, key=lambda k: (load[k], k))
                hosted[k].append(m)
                load[k] += d
                room[k] -= self.models[m].shard_bytes
            for g, fit in zip(gs, hosted):
                if not fit:
                    continue
                kv = gpu_bytes - sum(self.models[m].shard_bytes for m in fit)
                d_sum = sum(demand[m] / reps[m] for m in fit)
                for m in fit:
                    frac = kv * (demand[m] / reps[m]) / d_sum / (gpu_bytes - self.models[m].shard_bytes)
                    out.append(A.StartInstance(self._new_id(m, "i"), m, g, kv_fraction=frac, warm_engine=True))
        return out


def make_policy(name: str, *, models: list[ModelInfo], config: PolicyConfig | None = None, history=None) -> Policy:
    """The policy called ``name`` (one of POLICY_NAMES) over ``models``; ``config`` is adjusted by the name
    (e.g. `autoscale` turns prewarming off). ``history``: model -> (window_start_s, avg, peak) arrays."""
    if name not in POLICY_NAMES:
        raise InvalidArgumentError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}", policy=name)
    if not models:
        raise InvalidArgumentError("make_policy needs at least one model")
    cfg = replace(config or PolicyConfig(), **_PRESETS[name])
    cls = StaticPolicy if name in ("shared", "dedicated") else Policy
    return cls(name, list(models), cfg, history)
