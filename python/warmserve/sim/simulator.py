"""The discrete-event simulator: the policy core, unchanged, against simulated workers.

Time is simulated (a heap of events plus the sorted arrival stream); nothing here reads the wall clock. The policy
sees a ``ClusterState`` that this driver keeps current and answers with actions, which the driver applies with
durations from the cost model:

- a cold instance: engine start (unless the policy has engines prewarmed) + weight load over the host-to-device
  link + mapping its KV cache; a prewarm hit: the activation time; a prewarm still loading: the rest of its load.
- continuous batching at iteration level, as a fluid: an instance alternates prefill iterations (all waiting
  requests that fit, in one batch) with decode steps whose length depends on the batch size; between two changes
  of the batch every running request advances one token per step. Instances sharing a GPU (the `shared`
  baseline) time-share it: each step takes as many times longer as there are busy instances on its busiest GPU.
- KV blocks (256 tokens, all layers) are reserved for prompt + output at admission; an instance maps KV pages up
  to the policy's target and grows the mapping from free GPU memory when a request needs it.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import replace

import numpy as np

from warmserve.policy import actions as A
from warmserve.policy.state import KV_BLOCK_TOKENS, ClusterState, InstanceState, ModelInfo, PrewarmState
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel, ModelCost
from warmserve.sim.metrics import RunResult, summarize
from warmserve.workload.concurrency import concurrency_windows
from warmserve.workload.request import Trace, Workload

_EV_INST, _EV_READY, _EV_PREWARM = 0, 1, 2
_IDLE, _DECODE, _PREFILL = 0, 1, 2


class _Inst:
    """The simulated engine of one instance (the policy sees its ``st``)."""

    __slots__ = ("st", "mi", "cost", "waiting", "running", "progress", "t_last", "phase", "pf_batch", "version",
                 "slow", "kv_used", "step_cache", "shard", "block_bytes", "ready", "stopped_at")

    def __init__(self, st: InstanceState, mi: int, cost: ModelCost, shard: int, block_bytes: int):
        self.st = st
        self.mi = mi
        self.cost = cost
        self.waiting: deque[int] = deque()
        self.running: list[tuple[float, int]] = []  # heap of (progress at which it finishes, request)
        self.progress = 0.0  # decode steps done since creation (fluid)
        self.t_last = 0.0
        self.phase = _IDLE
        self.pf_batch: list[int] = []
        self.version = 0
        self.slow = 1
        self.kv_used = 0
        self.step_cache: dict[int, float] = {}
        self.shard = shard
        self.block_bytes = block_bytes
        self.ready = False
        self.stopped_at = None


def model_infos(served: list[ServedModel], cost: CostModel) -> list[ModelInfo]:
    """What the policy knows of each served model, from the cost model."""
    out = []
    for s in served:
        c = cost.cost(s.name, s.size)
        out.append(ModelInfo(s.name, int(c.weight_bytes), c.tp, int(c.kv_bytes_per_token),
                             prefill_s=cost.prefill_s(c, 1024), decode_s_per_token=cost.decode_step_s(c, 16)))
    return out


def history_windows(workload: Workload, served: list[ServedModel], cost: CostModel, warmup_s: float,
                    window_s: float) -> dict:
    """Forecast history per model: windows of in-flight load over the workload's history (before the warm-up),
    with each request in flight for its uncontended latency. Windows with no data are NaN (missing)."""
    h = workload.history
    if not len(h):
        return {}
    clock0 = workload.clock0_s
    out = {}
    idx = {n: i for i, n in enumerate(h.models)}
    for s in served:
        if s.name not in idx:
            continue
        c = cost.cost(s.name, s.size)
        m = (h.model == idx[s.name]) & (h.arrival_s < -warmup_s)
        arr = h.arrival_s[m] + clock0
        if not len(arr):
            continue
        lat = np.array([cost.prefill_s(c, int(p)) for p in h.prompt_tokens[m]]) \
            + (h.output_tokens[m] - 1) * cost.decode_step_s(c, 16)
        t0 = math.floor(arr.min() / window_s) * window_s
        t1 = math.floor((clock0 - warmup_s) / window_s) * window_s
        starts, avg, peak = concurrency_windows(arr, arr + lat, t0, t1, window_s)
        if workload.history_spans:
            # only windows inside the spans the history covers are known (quiet ones there are real zeros)
            known = np.zeros(len(starts), bool)
            for a, b in workload.history_spans:
                known |= (starts >= a + clock0 - 1e-6) & (starts + window_s <= b + clock0 + 1e-6)
        else:
            counts = np.bincount(((arr - t0) // window_s).astype(np.int64), minlength=len(starts))[:len(starts)]
            known = counts > 0
        # absent windows are missing to the policy
        out[s.name] = (starts[known], avg[known], peak[known])
    return out


class Simulator:
    def __init__(self, workload: Workload, served: list[ServedModel], policy_name: str, *,
                 config: SimConfig = SimConfig(), cost: CostModel | None = None, progress=None):
        from warmserve.policy import PolicyConfig, make_policy

        self.cfg = config
        self.cost = cost or CostModel.for_gpu(config.gpu)
        self.workload = workload
        self.served = served
        names = [s.name for s in served]
        missing = set(workload.models) - set(names)
        if missing:
            raise ValueError(f"workload models {sorted(missing)} are not served: add them to the served models")
        self.infos = model_infos(served, self.cost)
        self.mcost = [self.cost.cost(s.name, s.size) for s in served]
        self.names = names
        self.midx = {n: i for i, n in enumerate(names)}
        self.state = ClusterState.uniform(config.n_servers, self.infos, gpus_per_server=config.gpus_per_server,
                                          gpu_bytes=self.cost.gpu.pool_bytes)
        pcfg = replace(PolicyConfig(), **config.policy_overrides) if config.policy_overrides else PolicyConfig()
        self.max_batch = config.max_batch or pcfg.instance_capacity
        self.warmup_s = workload.warmup_s if config.warmup_s is None else config.warmup_s
        self.clock0 = workload.clock0_s
        hist = history_windows(workload, served, self.cost, self.warmup_s, pcfg.window_s)
        self.policy = make_policy(policy_name, models=self.infos, config=pcfg, history=hist)
        self.policy_name = policy_name
        self.progress = progress
        self._build_requests()

    # -- setup --------------------------------------------------------------------------------------------

    def _build_requests(self):
        w = self.workload
        warm = w.history.span(-self.warmup_s, 0.0) if self.warmup_s > 0 else Trace.empty(w.models)
        remap = np.array([self.midx[n] for n in w.models], dtype=np.int32)
        tr = w.trace
        self.n_warm = len(warm)
        arr = np.concatenate([warm.arrival_s, tr.arrival_s])
        self.arrival = (arr + self.clock0).tolist()
        self.req_model = remap[np.concatenate([warm.model, tr.model])].tolist()
        self.prompt = np.concatenate([warm.prompt_tokens, tr.prompt_tokens]).tolist()
        self.output = np.concatenate([warm.output_tokens, tr.output_tokens]).tolist()
        n = len(self.arrival)
        self.first = [math.nan] * n
        self.finish = [math.nan] * n
        self.blocks = [(p + o + KV_BLOCK_TOKENS - 1) // KV_BLOCK_TOKENS for p, o in zip(self.prompt, self.output)]

    # -- the event loop -----------------------------------------------------------------------------------

    def run(self) -> RunResult:
        st = self.state
        cfg = self.cfg
        pol = self.policy
        self.heap: list = []
        self.seq = 0
        self.insts: dict[str, _Inst] = {}
        self.gpu_insts: list[list[_Inst]] = [[] for _ in st.gpus]
        self.gpu_used = [0] * len(st.gpus)  # bytes held per GPU (mirror of state.free_bytes_on, kept incrementally)
        self.link_free = [0.0] * len(st.gpus)
        self.loading: dict[str, tuple[float, float]] = {}  # prewarm id -> (load start, load end)
        # (model, gpus) of instances removed since the last tick: their weights are still on those GPUs (a live
        # worker's Deactivate keeps them), so a Prewarm of that model there is loaded at once, with no copy
        self.kept: set[tuple[str, tuple[int, ...]]] = set()
        self.queues: list[deque[int]] = [deque() for _ in self.names]
        self.gpu_seconds = 0.0
        self.starts = {"total": 0, "hit": 0, "loading": 0, "cold": 0}
        self.evictions = 0
        st.queued = {n: 0 for n in self.names}
        on_start = getattr(pol, "on_request_start", None)
        on_done = getattr(pol, "on_request_done", None)
        self._on_done = on_done
        n = len(self.arrival)
        t_start = self.clock0 - max(self.warmup_s, 0.0)  # warm-up arrivals all lie in [t_start, clock0)
        end_arrivals = self.clock0 + self.workload.duration_s
        horizon = max(end_arrivals, self.arrival[-1] if n else end_arrivals) + cfg.drain_s
        self.now = t_start
        next_tick = t_start
        self.open_reqs = 0
        i = 0
        arrival = self.arrival
        req_model = self.req_model
        queues = self.queues
        heap = self.heap
        names = self.names
        tick_s = cfg.tick_s
        pbar = self.progress
        last_pbar = t_start
        while True:
            t_arr = arrival[i] if i < n else math.inf
            t_ev = heap[0][0] if heap else math.inf
            t = min(t_arr, t_ev, next_tick)
            if t > horizon or (i >= n and self.open_reqs == 0 and t >= end_arrivals):
                break
            self.now = t
            if t == t_ev:
                _, _, kind, obj, ver = heapq.heappop(heap)
                if kind == _EV_INST:
                    if obj.version == ver:
                        self._inst_event(obj, t)
                elif kind == _EV_READY:
                    if obj.version == ver:
                        self._ready(obj, t)
                else:
                    self._prewarm_done(obj, t)
            elif t == t_arr:
                m = req_model[i]
                queues[m].append(i)
                name = names[m]
                st.queued[name] += 1
                self.open_reqs += 1
                if on_start is not None:
                    on_start(name, t)
                self._drain(m, t)
                i += 1
            else:
                self._tick(t)
                next_tick = t + tick_s
                if pbar is not None and t - last_pbar >= 60.0:
                    pbar.update(t - last_pbar)
                    last_pbar = t
        end = max(self.now, end_arrivals)
        for inst in list(self.insts.values()):
            self.gpu_seconds += (end - max(inst.st.created_s, self.clock0)) * len(inst.st.gpus)
        if pbar is not None:
            pbar.update(max(end - last_pbar, 0.0))
        return self._result(end)

    # -- policy calls -------------------------------------------------------------------------------------

    def _tick(self, t: float):
        st = self.state
        for pid, (a, b) in self.loading.items():
            p = st.prewarms.get(pid)
            if p is not None:
                p.progress = 1.0 if t >= b else max(0.0, (t - a) / (b - a))
        for act in self.policy.tick(st, t):
            self._apply(act, t)
        self.kept.clear()  # weights no Prewarm kept are evicted
        for inst in self.insts.values():
            # requests held back for KV memory get another chance once prewarms have been evicted
            if inst.waiting and inst.ready and inst.phase == _IDLE:
                self._schedule(inst, t)
        for m, q in enumerate(self.queues):
            if q:
                self._drain(m, t)

    def _drain(self, m: int, t: float):
        """Route queued requests of model m, oldest first, until the policy says wait."""
        q = self.queues[m]
        name = self.names[m]
        st = self.state
        route = self.policy.route
        while q:
            rid = q[0]
            act = route(st, name, t, rid)
            if act is None:
                return
            if isinstance(act, A.Route):
                q.popleft()
                st.queued[name] -= 1
                inst = self.insts.get(act.instance_id)
                if inst is None:
                    raise RuntimeError(f"policy routed to unknown instance {act.instance_id!r}")
                inst.st.in_flight += 1
                self._admit(inst, rid, t)
            else:
                # a creation (or another action): the request waits in the queue until the next retry
                self._apply(act, t)
                return

    # -- actions ------------------------------------------------------------------------------------------

    def _apply(self, act, t: float):
        st = self.state
        if isinstance(act, A.Route):
            # a Route from tick: same as routing the oldest queued request of that model
            m = self.midx[act.model]
            q = self.queues[m]
            if q:
                rid = q.popleft()
                st.queued[act.model] -= 1
                inst = self.insts[act.instance_id]
                inst.st.in_flight += 1
                self._admit(inst, rid, t)
        elif isinstance(act, A.Prewarm):
            info = st.models[act.model]
            gpus = tuple(act.gpus)
            st.prewarms[act.prewarm_id] = PrewarmState(act.prewarm_id, act.model, gpus, 0.0, act.score)
            if (act.model, gpus) in self.kept:
                self.kept.discard((act.model, gpus))
                st.prewarms[act.prewarm_id].progress = 1.0
                for g in gpus:
                    self.gpu_used[g] += info.shard_bytes
                return
            self._forget_kept(gpus)
            c = self.mcost[self.midx[act.model]]
            start = max([t] + [self.link_free[g] for g in act.gpus])
            end = start + self.cost.load_s(c)
            for g in act.gpus:
                self.link_free[g] = end
                self.gpu_used[g] += info.shard_bytes
            self.loading[act.prewarm_id] = (start, end)
            self._push(end, _EV_PREWARM, act.prewarm_id, 0)
        elif isinstance(act, (A.Evict, A.CancelPrewarm)):
            self._drop_prewarm(act.prewarm_id)
            self.evictions += isinstance(act, A.Evict)
        elif isinstance(act, A.StartInstance):
            self._start(act, t)
        elif isinstance(act, A.StopInstance):
            inst = self.insts.get(act.instance_id)
            if inst is not None:
                inst.st.draining = True
                if inst.st.in_flight == 0:
                    self._remove(inst, t)
        elif isinstance(act, A.SetKvTarget):
            inst = self.insts.get(act.instance_id)
            if inst is not None:
                inst.st.kv_free_target = act.free_blocks
                if inst.ready:
                    self._remap(inst)
        else:
            raise TypeError(f"unknown action {act!r}")

    def _forget_kept(self, gpus: tuple[int, ...]):
        """Something else goes onto these GPUs: weights kept there are gone."""
        if self.kept:
            self.kept = {k for k in self.kept if not set(k[1]) & set(gpus)}

    def _drop_prewarm(self, pid: str):
        p = self.state.prewarms.pop(pid, None)
        if p is None:
            return
        b = self.state.models[p.model].shard_bytes
        for g in p.gpus:
            self.gpu_used[g] -= b
        ld = self.loading.pop(pid, None)
        if ld is not None and ld[1] > self.now:
            # the link stops copying this shard now
            for g in p.gpus:
                if self.link_free[g] == ld[1]:
                    self.link_free[g] = max(self.now, ld[0])

    def _prewarm_done(self, pid: str, t: float):
        p = self.state.prewarms.get(pid)
        ld = self.loading.get(pid)
        if p is not None and ld is not None and ld[1] <= t:
            p.progress = 1.0
            del self.loading[pid]

    def _start(self, act: A.StartInstance, t: float):
        st = self.state
        for pid in act.evict:
            if pid in st.prewarms:
                self.evictions += 1
            self._drop_prewarm(pid)
        m = self.midx[act.model]
        info = st.models[act.model]
        c = self.mcost[m]
        gpus = tuple(act.gpus)
        self._forget_kept(gpus)
        ist = InstanceState(act.instance_id, act.model, gpus, created_s=t)
        cap = min(st.gpus[g].total_bytes for g in gpus) - info.shard_bytes
        ist.kv_blocks_total = max(int(act.kv_fraction * cap) // info.kv_block_bytes, 0)
        inst = _Inst(ist, m, c, info.shard_bytes, info.kv_block_bytes)
        inst.t_last = t
        self.starts["total"] += 1
        p = st.prewarms.get(act.prewarm_id) if act.prewarm_id else None
        if p is not None:
            ld = self.loading.pop(act.prewarm_id, None)
            del st.prewarms[act.prewarm_id]  # its shard bytes now belong to the instance
            if ld is None or ld[1] <= t:
                self.starts["hit"] += 1
                ready = t + self.cost.activation_s
            else:
                self.starts["loading"] += 1
                ready = ld[1] + self.cost.activation_s
        else:
            self.starts["cold"] += 1
            for g in gpus:
                self.gpu_used[g] += info.shard_bytes
            begin = t + (0.0 if act.warm_engine else self.cost.engine_s(c))
            begin = max([begin] + [self.link_free[g] for g in gpus])
            loaded = begin + self.cost.load_s(c)
            for g in gpus:
                self.link_free[g] = loaded
            # an engine started from scratch allocates its whole KV cache before serving; WarmServe's engine
            # maps KV pages lazily while it serves (PAPER.md section 7), so only the cold engine pays for it
            kv_bytes = 0 if act.warm_engine else min(ist.kv_blocks_total, self._free_blocks(inst)) * info.kv_block_bytes
            ready = loaded + self.cost.kv_map_s(kv_bytes)
        st.instances[act.instance_id] = ist
        self.insts[act.instance_id] = inst
        for g in gpus:
            self.gpu_insts[g].append(inst)
        self._push(ready, _EV_READY, inst, inst.version)

    def _ready(self, inst: _Inst, t: float):
        inst.ready = True
        inst.st.ready_s = t
        inst.t_last = t
        self._remap(inst)
        self._schedule(inst, t)
        self._tick(t)

    def _remove(self, inst: _Inst, t: float):
        st = inst.st
        self.state.instances.pop(st.instance_id, None)
        self.insts.pop(st.instance_id, None)
        b = inst.shard + st.kv_blocks_mapped * inst.block_bytes
        for g in st.gpus:
            self.gpu_used[g] -= b
            self.gpu_insts[g].remove(inst)
        st.kv_blocks_mapped = 0
        inst.version += 1
        self.kept.add((st.model, tuple(st.gpus)))
        # GPU time is measured over the replayed span only (the warm-up is not counted)
        self.gpu_seconds += max(t - max(st.created_s, self.clock0), 0.0) * len(st.gpus)
        if inst.phase != _IDLE:
            inst.phase = _IDLE
            self._reslow(inst, t)

    # -- KV memory ----------------------------------------------------------------------------------------

    def _free_blocks(self, inst: _Inst) -> int:
        st = self.state
        free = min(st.gpus[g].total_bytes - self.gpu_used[g] for g in inst.st.gpus)
        return max(free // inst.block_bytes, 0)

    def _remap(self, inst: _Inst, need: int = 0):
        """Map KV blocks to the policy's target (used + free target, or everything), growing only into free
        memory; ``need`` more blocks than in use are asked for by an admission."""
        s = inst.st
        tgt = s.kv_blocks_total if s.kv_free_target is None else min(s.kv_blocks_total, inst.kv_used + s.kv_free_target)
        tgt = max(tgt, min(inst.kv_used + need, s.kv_blocks_total))
        d = tgt - s.kv_blocks_mapped
        if d > 0:
            d = min(d, self._free_blocks(inst))
        if d:
            s.kv_blocks_mapped += d
            b = d * inst.block_bytes
            for g in s.gpus:
                self.gpu_used[g] += b

    # -- the engine ---------------------------------------------------------------------------------------

    def _push(self, t, kind, obj, ver):
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj, ver))

    def _step_s(self, inst: _Inst, b: int) -> float:
        s = inst.step_cache.get(b)
        if s is None:
            s = inst.step_cache[b] = self.cost.decode_step_s(inst.cost, b)
        return s * inst.slow

    def _advance(self, inst: _Inst, t: float):
        if inst.phase == _DECODE and inst.running:
            inst.progress += (t - inst.t_last) / self._step_s(inst, len(inst.running))
        inst.t_last = t

    def _admit(self, inst: _Inst, rid: int, t: float):
        inst.waiting.append(rid)
        if inst.ready and inst.phase != _PREFILL:
            self._advance(inst, t)
            self._schedule(inst, t)

    def _schedule(self, inst: _Inst, t: float):
        """Choose the instance's next iteration and push the event that ends it."""
        old = inst.phase
        inst.version += 1
        if inst.waiting and len(inst.running) < self.max_batch:
            batch = []
            tokens = 0
            room = self.max_batch - len(inst.running)
            while inst.waiting and len(batch) < room:
                rid = inst.waiting[0]
                need = self.blocks[rid]
                if inst.kv_used + need > inst.st.kv_blocks_mapped:
                    self._remap(inst, need)
                    if inst.kv_used + need > inst.st.kv_blocks_mapped:
                        break
                inst.waiting.popleft()
                inst.kv_used += need
                inst.st.kv_blocks_used = inst.kv_used
                batch.append(rid)
                tokens += self.prompt[rid]
            if batch:
                inst.pf_batch = batch
                inst.phase = _PREFILL
                if old == _IDLE:
                    self._reslow(inst, t)
                self._push(t + self.cost.prefill_s(inst.cost, tokens) * inst.slow, _EV_INST, inst, inst.version)
                return
        if inst.running:
            inst.phase = _DECODE
            if old == _IDLE:
                self._reslow(inst, t)
            dt = (inst.running[0][0] - inst.progress) * self._step_s(inst, len(inst.running))
            self._push(t + max(dt, 0.0), _EV_INST, inst, inst.version)
            return
        inst.phase = _IDLE
        if old != _IDLE:
            self._reslow(inst, t)

    def _inst_event(self, inst: _Inst, t: float):
        if inst.phase == _PREFILL:
            inst.t_last = t
            for rid in inst.pf_batch:
                self.first[rid] = t
                out = self.output[rid]
                if out <= 1:
                    self._complete(inst, rid, t)
                else:
                    heapq.heappush(inst.running, (inst.progress + out - 1, rid))
            inst.pf_batch = []
        else:
            self._advance(inst, t)
            run = inst.running
            # the batch has not changed since this event was pushed, so its first finisher is done exactly
            if run and inst.progress < run[0][0]:
                inst.progress = run[0][0]
            lim = inst.progress + 1e-9
            while run and run[0][0] <= lim:
                _, rid = heapq.heappop(run)
                self._complete(inst, rid, t)
        if inst.st.instance_id in self.insts:
            self._schedule(inst, t)
        m = inst.mi
        if self.queues[m]:
            self._drain(m, t)

    def _complete(self, inst: _Inst, rid: int, t: float):
        self.finish[rid] = t
        self.open_reqs -= 1
        inst.kv_used -= self.blocks[rid]
        s = inst.st
        s.kv_blocks_used = inst.kv_used
        s.in_flight -= 1
        if self._on_done is not None:
            self._on_done(s.model, t)
        if s.kv_free_target is not None:
            self._remap(inst)
        if s.draining and s.in_flight == 0:
            self._remove(inst, t)

    def _reslow(self, inst: _Inst, t: float):
        """An instance turned busy or idle: instances sharing a GPU with it get a new time share."""
        gi = self.gpu_insts
        if all(len(gi[g]) <= 1 for g in inst.st.gpus):
            inst.slow = 1
            return
        affected = {id(o): o for g in inst.st.gpus for o in gi[g]}
        affected[id(inst)] = inst
        for o in affected.values():
            busy = max(sum(1 for x in gi[g] if x.phase != _IDLE) for g in o.st.gpus)
            new = max(busy, 1)
            if new != o.slow:
                if o.phase == _DECODE and o is not inst:
                    self._advance(o, t)
                    o.slow = new
                    o.version += 1
                    dt = (o.running[0][0] - o.progress) * self._step_s(o, len(o.running)) if o.running else 0.0
                    self._push(t + max(dt, 0.0), _EV_INST, o, o.version)
                else:
                    if o is inst and o.phase == _DECODE:
                        self._advance(o, t)
                    o.slow = new

    # -- results ------------------------------------------------------------------------------------------

    def _result(self, end: float) -> RunResult:
        k = self.n_warm
        t0 = self.clock0
        arr = np.asarray(self.arrival[k:]) - t0
        first = np.asarray(self.first[k:]) - t0
        fin = np.asarray(self.finish[k:]) - t0
        mdl = np.asarray(self.req_model[k:], dtype=np.int32)
        out = np.asarray(self.output[k:], dtype=np.int64)
        slo = np.array([self.cfg.ttft_slo_s or self.cfg.slo_scale * i.prefill_s for i in self.infos])
        return summarize(self.policy_name, self.names, arr, first, fin, mdl, out, slo[mdl] if len(mdl) else slo[:0],
                         duration_s=self.workload.duration_s, end_s=end - t0, gpu_seconds=self.gpu_seconds,
                         starts=dict(self.starts), evictions=self.evictions,
                         unanswered_ttft_s=self.cfg.unanswered_ttft_s, n_gpus=len(self.state.gpus))


def simulate(workload: Workload, served: list[ServedModel], policy: str, *, config: SimConfig = SimConfig(),
             cost: CostModel | None = None, progress=None) -> RunResult:
    """Run one policy over one workload; see ``Simulator``."""
    return Simulator(workload, served, policy, config=config, cost=cost, progress=progress).run()
