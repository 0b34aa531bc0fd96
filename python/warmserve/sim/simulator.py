"""The discrete-event simulator: the policy core and its driver, unchanged, against simulated workers.

Time is simulated (a heap of events plus the sorted arrival stream); nothing here reads the wall clock. The
simulator is an ``Executor`` of ``warmserve.policy.driver.PolicyDriver``, the same driver the live controller
runs: it carries the driver's actions out with durations from the cost model and reports back when they are done.

- a cold instance of a policy without prewarmed engines (``autoscale``): a fresh vanilla vLLM engine with a fast
  checkpoint loader, ``CostModel.vllm_cold_start_s`` (engine initialisation, tensor-parallel set-up, weights from
  host memory at the ServerlessLLM rate; its KV cache is allocated inside initialisation, no VMM mapping; on CPU
  workers sharing their server's cores, ``GpuType.host_cores``, the start part stretches with the server's busy
  devices, ``BatchEngines.start_engine``, then ``_engine_up`` loads the weights); a cold instance in a prewarmed
  engine: the weight load over the host-to-device link + the activation; a prewarm hit: the activation time; a
  prewarm still loading: the rest of its load + the activation.
- each instance's engine: ``sim.engine_model.BatchEngines`` (vLLM-like continuous batching: admission up to the
  engine's sequence limit and the KV blocks mapped, decode steps that read the batch's KV cache, GPUs
  time-shared by colocated instances, CPU workers slowed by sharing their server's cores).
- one host-to-device link per GPU copies one shard at a time; a dropped prewarm that was still queued or copying
  frees the link for whatever is left (``_free_link``).
- a stopped instance's weights stay on its GPUs until the driver drops them (they no longer count as used memory
  here, as the policy counts them), so a Prewarm that keeps them takes them with no copy.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from warmserve.config import ControllerConfig
from warmserve.errors import InvalidArgumentError, UnservableModelError
from warmserve.geometry import blocks_for_tokens
from warmserve.policy import actions as A
from warmserve.policy.driver import KeptWeights, PolicyDriver
from warmserve.policy.state import ClusterState, InstanceState, PrewarmState
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel
from warmserve.sim.engine_model import ENGINE_MODELS, BatchEngines, EngineInst, check_fluid_steps
from warmserve.sim.inputs import (check_clock, check_served, history_windows, longest_requests, model_infos,
                                  planning_config, warmup_trace)
from warmserve.sim.metrics import RunResult, start_summary, summarize
from warmserve.workload.request import Workload

_EV_INST, _EV_READY, _EV_PREWARM, _EV_LOSS = 0, 1, 2, 3


class Simulator:
    """One policy over one workload on a simulated cluster: an ``Executor`` of the policy driver.

    ``gpu_losses``: (time, GPU ids) pairs, the time in seconds on the workload's clock (0: the start of the
    replayed trace); at that time the GPUs are lost with everything on them, as when a worker dies: requests
    that had no token yet start over elsewhere, the others resume elsewhere after the tokens they had out
    (``_lose``), but for one that was on ``max_losses_per_request`` lost GPUs (the live controller's
    ``ControllerConfig.max_worker_losses_per_request``): it ends there, unfinished, as the live one fails it."""

    def __init__(self, workload: Workload, served: list[ServedModel], policy_name: str, *,
                 config: SimConfig = SimConfig(), cost: CostModel | None = None, progress=None, gpu_losses=(),
                 history: dict | None = None,
                 max_losses_per_request: int = ControllerConfig.max_worker_losses_per_request):
        from warmserve.policy import make_policy

        self.cfg = config
        self.cost = cost or CostModel.for_gpu(config.gpu)
        self.workload = workload
        self.served = served
        names = [s.name for s in served]
        check_served(workload, names)
        pcfg = planning_config(config.policy_config, self.cost)
        self.warmup_s = workload.warmup_s if config.warmup_s is None else config.warmup_s
        check_clock(workload, self.warmup_s)
        self._warm = warmup_trace(workload, self.warmup_s)
        self.infos = model_infos(served, self.cost, longest_requests(workload, self._warm))
        self.mcost = [self.cost.cost(s.name, s.size) for s in served]
        self.names = names
        self.midx = {n: i for i, n in enumerate(names)}
        self.state = ClusterState.uniform(config.n_servers, self.infos, gpus_per_server=config.gpus_per_server,
                                          gpu_bytes=self.cost.gpu.pool_bytes)
        bad = self.state.unservable()
        if bad:
            raise UnservableModelError("; ".join(f"model {m!r} cannot be served: {why}" for m, why in bad.items()),
                                       models=sorted(bad))
        if config.engine_model not in ENGINE_MODELS:
            raise InvalidArgumentError(f"engine model {config.engine_model!r}: choose one of {ENGINE_MODELS}",
                                       engine_model=config.engine_model)
        # the earlier "fluid" model capped the batch at the policy's B; the vLLM-like one at the engine's limit
        default_batch = pcfg.instance_capacity if config.engine_model == "fluid" else self.cost.limits.max_running_seqs
        self.max_batch = config.max_num_seqs or default_batch
        if config.engine_model == "fluid":
            check_fluid_steps(self.cost, dict(zip(names, self.mcost)), self.max_batch)
        if 0 < config.chunked_prefill_tokens < self.max_batch:
            # vLLM refuses it (SchedulerConfig: max_num_batched_tokens must be >= max_num_seqs); found in review:
            # taken, a full batch left a step 1 prompt token, so a 1000-token prompt took 1000 steps
            raise InvalidArgumentError(
                f"chunked_prefill_tokens {config.chunked_prefill_tokens} (--chunked-prefill-tokens) is below "
                f"max_num_seqs {self.max_batch} (SimConfig.max_num_seqs, or the cost profile's "
                f"engine_limits.max_running_seqs when 0): a step must hold one decode token of every running "
                f"sequence, as vLLM requires; give at least {self.max_batch} tokens, or 0 for no chunked prefill",
                chunked_prefill_tokens=config.chunked_prefill_tokens, max_num_seqs=self.max_batch)
        if workload.day_s != 86400.0:
            # the policy's daily season is 86400 s (policy/core.py): a shorter "day" put its history days where the
            # forecasts never looked (found in review: no forecast for the second window of a 7200 s day)
            raise InvalidArgumentError(f"workload {workload.name!r} has a day of {workload.day_s:g} s; the policy's "
                                       "forecasts take a day as 86400 s: build the workload with the default day_s",
                                       day_s=workload.day_s)
        self.clock0 = workload.clock0_s
        #: the policy's history windows per model: ``history`` where given (the replay's twin passes the live
        #: cluster's, computed from its own cost model), else from this one
        self.history = history if history is not None else history_windows(workload, served, self.cost,
                                                                           self.warmup_s, pcfg.window_s)
        self.policy = make_policy(policy_name, models=self.infos, config=pcfg, history=self._history_copy())
        self.policy_name = policy_name
        self.progress = progress
        self.gpu_losses = sorted((float(t), tuple(g)) for t, g in gpu_losses)
        if max_losses_per_request < 1:
            raise InvalidArgumentError(f"max_losses_per_request must be >= 1, got {max_losses_per_request}",
                                       max_losses_per_request=max_losses_per_request)
        self.max_losses_per_request = max_losses_per_request
        #: the record of `shared`'s layout search, and of `dedicated`'s choice of layout (None: not searched)
        self.shared_search: dict | None = None
        self.dedicated_layout: dict | None = None
        if config.shared_search:
            self._choose_static_layout()
        self.driver = PolicyDriver(self.policy, self.state, self)
        self._build_requests()

    # -- setup --------------------------------------------------------------------------------------------

    def _history_copy(self) -> dict:
        """A fresh copy of ``history`` for a policy (it writes into its history's arrays as windows pass), so that
        the trial runs of a layout search start from the same history."""
        return {m: tuple(np.array(x) for x in s) for m, s in self.history.items()}

    def _choose_static_layout(self) -> None:
        """`shared` lays out the best of its layout search. `dedicated` lays out the better (SLO attainment, then
        P99 TTFT) of its own layout and the search's best with one model per group, both run on this workload
        (found in review: its own layout, spare GPUs by mean peak concurrency, had a P99 of 7.77 s where the
        one-per-group layout of the same GPUs had 3.46 s on paper-code); ``shared_search`` False keeps both
        policies' own layouts."""
        from warmserve.policy.colocation import UnplacedModelError
        from warmserve.sim.shared_search import search_shared_layout, simulate_layout, slo_key

        name = getattr(self.policy, "name", "")
        if name == "shared":
            self.policy.layout, self.shared_search = search_shared_layout(self)
        elif name == "dedicated":
            try:
                layout, rec = search_shared_layout(self, per_group_choices=(1,))
            except UnplacedModelError:
                return  # plan_shared leaves weights room for KV that dedicated's own layout does not: keep it
            own = simulate_layout(self, None)
            searched = slo_key(rec) > slo_key(own)
            if searched:
                self.policy.layout = layout
            self.dedicated_layout = {"chosen": "searched" if searched else "own",
                                     "own": {k: own[k] for k in ("slo_attainment", "ttft_p99_s")}, "searched": rec}

    def _build_requests(self):
        w = self.workload
        warm = self._warm
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
        # prompt + output - 1 tokens: the last token sampled is never fed back, so it never has K/V (the live
        # engine reserves the same at admission, Engine.add_request; vLLM's blocks grow to the same length)
        self.blocks = [blocks_for_tokens(max(p + o - 1, 1)) for p, o in zip(self.prompt, self.output)]

    # -- the event loop -----------------------------------------------------------------------------------

    def run(self) -> RunResult:
        st = self.state
        cfg = self.cfg
        driver = self.driver
        self._reset()
        n = len(self.arrival)
        t_start = self.clock0 - max(self.warmup_s, 0.0)  # warm-up arrivals all lie in [t_start, clock0)
        end_arrivals = self.clock0 + self.workload.duration_s
        bad = np.flatnonzero(~np.isfinite(np.asarray(self.arrival, dtype=np.float64)))
        if len(bad):  # found in review: the horizon below became NaN/inf and the loop never stopped
            raise InvalidArgumentError(f"workload {self.workload.name!r}: {len(bad)} of the {n} arrival times are not "
                                       f"finite (request {int(bad[0])}: {self.arrival[bad[0]]}): give finite arrival "
                                       f"times", count=int(len(bad)), request=int(bad[0]))
        horizon = max(end_arrivals, self.arrival[-1] if n else end_arrivals) + cfg.drain_s
        for t_loss, gpus in self.gpu_losses:
            self._push(self.clock0 + t_loss, _EV_LOSS, gpus, 0)
        self.now = t_start
        next_tick = t_start
        self.open_reqs = 0
        i = 0
        arrival = self.arrival
        req_model = self.req_model
        prompt = self.prompt
        queues = st.queues
        heap = self.heap
        names = self.names
        tick_s = cfg.tick_s
        pbar = self.progress
        engine_event = self.engines.event  # the engines of this run (``_reset``), called once per iteration
        last_pbar = t_start
        while True:
            t_arr = arrival[i] if i < n else math.inf
            t_ev = heap[0][0] if heap else math.inf
            t = t_ev if t_ev < t_arr else t_arr  # min() of the three by its comparisons: the call cost more, per event
            t = next_tick if next_tick < t else t
            if t > horizon or (i >= n and self.open_reqs == 0 and t >= end_arrivals):
                break
            self.now = t
            if t == t_ev:
                _, _, kind, obj, ver = heapq.heappop(heap)
                if kind == _EV_INST:
                    if obj.version == ver and engine_event(obj, t):
                        name = names[obj.mi]
                        if queues[name]:
                            driver.route(name, t)
                elif kind == _EV_READY:
                    if obj.version == ver:
                        self.engines.ready(obj, t)
                        driver.instance_ready(obj.st.instance_id, t)
                elif kind == _EV_PREWARM:
                    self._prewarm_done(obj, t)
                else:
                    self._lose(obj, t)
            elif t == t_arr:
                self.open_reqs += 1
                driver.submit(names[req_model[i]], i, t, prompt_tokens=prompt[i])
                i += 1
            else:
                driver.tick(t)
                self._sample_holding(t)
                next_tick = t + tick_s
                if pbar is not None and t - last_pbar >= 60.0:
                    pbar.update(t - last_pbar)
                    last_pbar = t
        end = max(self.now, end_arrivals)
        self._sample_holding(end)
        for g, n in enumerate(self.gpu_holders):
            if n:
                self.gpu_seconds += max(end - max(self.gpu_held_since[g], self.clock0), 0.0)
        if pbar is not None:
            pbar.update(max(end - last_pbar, 0.0))
        return self._result(end)

    def _reset(self) -> None:
        """The executor's state for a run: event heap, GPU memory and links, engines, counters."""
        st = self.state
        cfg = self.cfg
        self.heap: list = []
        self.seq = 0
        self.gpu_used = [0] * len(st.gpus)  # bytes held per GPU (mirror of state.free_bytes_on, kept incrementally)
        self.link_free = [0.0] * len(st.gpus)
        # copies the link owes that cannot be cancelled (cold starts' loads, a started instance's loading prewarm)
        self.link_hold = [0.0] * len(st.gpus)
        self.loading: dict[str, tuple[float, float]] = {}  # prewarm id -> (load start, load end)
        #: when a starting instance's weights are whole (its copy's end), by instance id: a start stopped before
        #: then leaves weights that are whole only then (``kept_copying``, by instance id; ``kept_copy_end``, by
        #: the prewarm that keeps them), as the live executor's kept prewarm takes over the start's load
        self.copy_end: dict[str, float] = {}
        self.kept_copying: dict[str, float] = {}
        self.kept_copy_end: dict[str, float] = {}
        fluid = cfg.engine_model == "fluid"
        # the engines' view of each request: a resumed one (migrated, or its GPU lost) prefills its prompt and the
        # tokens it had out, then generates the rest; self.prompt and self.output stay as the trace has them
        self.eng_prompt, self.eng_output = list(self.prompt), list(self.output)
        self.engines = BatchEngines(self.cost, self.max_batch, self.eng_prompt, self.eng_output, self.blocks,
                                    [g.total_bytes for g in st.gpus], self.gpu_used, self._push_inst,
                                    self._first_token, self._complete, kv_read=not fluid,
                                    max_batched_tokens=0 if fluid else self.cost.limits.max_batched_tokens,
                                    chunked_prefill_tokens=0 if fluid else cfg.chunked_prefill_tokens,
                                    server_gpus=lambda g: st.servers[st.gpus[g].server_id].gpu_ids,
                                    on_started=self._engine_up, on_refused=self._refused,
                                    # the earlier model is kept as it was measured: mapping uncharged
                                    kv_map_s_per_gib=0.0 if fluid else None)
        self.insts = self.engines.insts
        #: GPU time held by instances over the replayed span: a GPU counts once however many (co-served or
        #: colocated) instances it holds, from when the first starts to when the last leaves
        self.gpu_seconds = 0.0
        self.gpu_holders = [0] * len(st.gpus)
        self.gpu_held_since = [0.0] * len(st.gpus)
        #: GPU time of GPUs holding anything (an instance, prewarmed or loading weights) over the replayed span,
        #: counted as each policy tick leaves them and held until the next tick (so a change between ticks is
        #: off by up to tick_s: 0.3% on autoscale's paper-code run, where both figures should agree; weights
        #: kept after a stop live until that tick and are not seen): the audit's second figure beside
        #: gpu_seconds, which counts GPUs holding only prewarms as idle
        self.gpu_seconds_holding = 0.0
        self._holding = (self.clock0 - max(self.warmup_s, 0.0), 0)
        #: starts, evictions and migrated requests of the measured span ([clock0, end), as gpu_seconds) and of
        #: the unmeasured warm-up, apart (found in review: the warm-up's were counted with the measured span's,
        #: so `shared`'s layout counted as starts of the replay and the hit rate mixed both)
        self.counts = {"measured": self._no_counts(), "warmup": self._no_counts()}
        #: requests an engine refused, too large for its KV cache (``BatchEngines.admit``)
        self.refused: list[int] = []
        #: lost GPUs each request was on (``_lose``)
        self.losses: dict[int, int] = {}
        self.now = self.clock0 - max(self.warmup_s, 0.0)

    @staticmethod
    def _no_counts() -> dict:
        return {"total": 0, "hit": 0, "loading": 0, "cold": 0, "evictions": 0, "migrated": 0}

    def _counts(self, now_s: float) -> dict:
        """The counters an event at ``now_s`` adds to: the measured span's, or the warm-up's before clock0."""
        return self.counts["measured" if now_s >= self.clock0 else "warmup"]

    def _sample_holding(self, t: float) -> None:
        last_t, n = self._holding
        if t > max(last_t, self.clock0):
            self.gpu_seconds_holding += n * (t - max(last_t, self.clock0))
        st = self.state
        held = {g for i in st.instances.values() for g in i.gpus}
        held.update(g for p in st.prewarms.values() for g in p.gpus)
        self._holding = (t, len(held))

    def _push(self, t, kind, obj, ver):
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj, ver))

    def _push_inst(self, t: float, inst: EngineInst) -> None:
        self._push(t, _EV_INST, inst, inst.version)

    # -- reports from the engines -------------------------------------------------------------------------

    def _first_token(self, rid: int, t: float) -> None:
        if math.isnan(self.first[rid]):  # a resumed request's first token came out before
            self.first[rid] = t
        self.driver.prefill_done(rid, t)  # its prompt no longer counts as prefill load

    def _complete(self, inst: EngineInst, rid: int, t: float) -> None:
        self.finish[rid] = t
        self.open_reqs -= 1
        # the engine routes the model's queue once its iteration is done, not after each finisher
        self.driver.request_finished(inst.st.model, inst.st.instance_id, t, route=False)

    def _prewarm_done(self, pid: str, t: float):
        ld = self.loading.get(pid)
        if pid in self.state.prewarms and ld is not None and ld[1] <= t:
            self.driver.prewarm_loaded(pid)
            del self.loading[pid]

    def _lose(self, gpus: tuple[int, ...], t: float) -> None:
        """GPUs fail: instances on them stop with their requests, which start over elsewhere (those with tokens
        out resume after them, as the live controller resumes them), but for those on their
        ``max_losses_per_request``-th loss, which end unfinished (``Controller._on_lost`` fails them, before the
        driver hears of the loss); prewarms there are gone."""
        lost = set(gpus)
        requeue, ended = [], []
        for inst in [e for e in self.insts.values() if lost.intersection(e.st.gpus)]:
            for rid, tokens in self._take(inst, t):
                n = self.losses[rid] = self.losses.get(rid, 0) + 1
                (requeue if n < self.max_losses_per_request else ended).append((rid, tokens, inst.st))
            self._remove(inst, t)
        for rid, _, ist in ended:  # after the removals: a draining instance that ends with them stops at once
            self.open_reqs -= 1
            self.driver.request_finished(ist.model, ist.instance_id, t, route=False, request=rid)
        for p in self.state.prewarms.values():
            if lost.intersection(p.gpus):
                self._release_prewarm(p)
        requeue.sort(key=lambda x: x[0])  # oldest first
        self.driver.lose_gpus(gpus, t, [(self.names[self.req_model[r]], r, n) for r, n, _ in requeue])

    def _take(self, inst: EngineInst, t: float) -> list[tuple[int, int]]:
        """Every request off ``inst``, each as (request, prompt tokens its resumption prefills)."""
        out = []
        for rid, gen in self.engines.drop_requests(inst, t):
            if gen:
                self.eng_prompt[rid] += gen
                self.eng_output[rid] -= gen
            out.append((rid, self.eng_prompt[rid]))
        return out

    def migrate_requests(self, ist: InstanceState, now_s: float) -> list:
        inst = self.insts.get(ist.instance_id)
        if inst is None:
            return []
        moved = sorted(self._take(inst, now_s))  # oldest first
        self._counts(now_s)["migrated"] += len(moved)
        return moved

    # -- the executor -------------------------------------------------------------------------------------

    def sync(self, now_s: float) -> None:
        for pid, (a, b) in self.loading.items():
            self.driver.prewarm_progress(pid, 1.0 if now_s >= b else max(0.0, (now_s - a) / (b - a)))

    def settle(self, now_s: float) -> None:
        self.engines.retry_held(now_s)

    def load_prewarm(self, p: PrewarmState, now_s: float) -> None:
        c = self.mcost[self.midx[p.model]]
        shard = self.state.models[p.model].shard_bytes
        start = max([now_s] + [self.link_free[g] for g in p.gpus])
        end = start + self.cost.load_s(c)
        for g in p.gpus:
            self.link_free[g] = end
            self.gpu_used[g] += shard
        self.loading[p.prewarm_id] = (start, end)
        self._push(end, _EV_PREWARM, p.prewarm_id, 0)

    def keep_prewarm(self, p: PrewarmState, kept: KeptWeights, now_s: float) -> None:
        # kept weights do not count as used memory here (see stop_instance): they count again from now
        shard = self.state.models[p.model].shard_bytes
        for g in p.gpus:
            self.gpu_used[g] += shard
        end = self.kept_copying.pop(kept.instance_id, None)
        if end is not None and end > now_s:
            # kept from a start stopped while its copy ran: whole only once it ends, as the live executor's prewarm
            # takes that load over (a start from it waits for it, not a hit); the driver's progress stays 1.0 there
            self.kept_copy_end[p.prewarm_id] = end

    def drop_prewarm(self, p: PrewarmState, evicted: bool, now_s: float) -> None:
        self._release_prewarm(p)
        self._counts(now_s)["evictions"] += evicted

    def _release_prewarm(self, p: PrewarmState) -> None:
        b = self.state.models[p.model].shard_bytes
        for g in p.gpus:
            self.gpu_used[g] -= b
        ld = self.loading.pop(p.prewarm_id, None)
        if ld is not None and ld[1] > self.now:
            self._free_link(p.gpus)
        self.kept_copy_end.pop(p.prewarm_id, None)

    def _free_link(self, gpus) -> None:
        """A queued or copying prewarm was dropped: each of its links is busy only until the end of what is still
        owed on it (the other prewarms' copies, held copies), not until the dropped copy's end. Copies queued
        behind the dropped one keep their times (a gap may stay before them; later requests fill in after)."""
        now = self.now
        owed = {g: max(now, self.link_hold[g]) for g in gpus}
        prewarms = self.state.prewarms
        for pid, (_, end) in self.loading.items():
            p = prewarms.get(pid)
            if p is None or end <= now:
                continue
            for g in p.gpus:
                if g in owed and end > owed[g]:
                    owed[g] = end
        for g, t in owed.items():
            self.link_free[g] = t

    def drop_kept(self, kept: KeptWeights, now_s: float) -> None:
        # kept weights left the memory accounting when their instance stopped
        self.kept_copying.pop(kept.instance_id, None)

    def start_instance(self, ist: InstanceState, act: A.StartInstance, p: PrewarmState | None, now_s: float):
        m = self.midx[ist.model]
        info = self.state.models[ist.model]
        c = self.mcost[m]
        gpus = ist.gpus
        inst = self.engines.add(ist, m, c, info.shard_bytes, info.kv_block_bytes, now_s)
        for g in gpus:
            while len(self.gpu_holders) <= g:  # GPUs that joined after the start
                self.gpu_holders.append(0)
                self.gpu_held_since.append(0.0)
            if not self.gpu_holders[g]:
                self.gpu_held_since[g] = now_s
            self.gpu_holders[g] += 1
        counts = self._counts(now_s)
        counts["total"] += 1
        if p is None:
            counts["cold"] += 1
            inst.lazy_map = act.warm_engine  # vanilla vLLM allocates its KV cache inside its initialisation
            for g in gpus:
                self.gpu_used[g] += info.shard_bytes
            if act.warm_engine:
                # a prewarmed engine loads the weights over the host-to-device link, then activates them; it
                # maps KV pages lazily while it serves (PAPER.md section 7)
                self._load(inst, now_s, self.cost.load_s(c), self.cost.activation_s)
            elif self.cost.gpu.host_cores:
                # vanilla vLLM started fresh (below), as a CPU engine process: it computes until it is up
                # (interpreter, imports), sharing its server's cores with the busy devices, so its start stretches
                # with them; then it loads (_engine_up)
                self.engines.start_engine(inst, self.cost.vllm_cold_start_s(c) - self.cost.fast_load_s(c), now_s)
            else:
                # vanilla vLLM started fresh, weights by a fast loader (ServerlessLLM): engine initialisation and
                # tensor-parallel set-up, then the weights from host memory (vllm_cold_start_s); vLLM allocates its
                # KV cache inside initialisation, so no page mapping is charged
                self._load(inst, now_s + self.cost.vllm_cold_start_s(c) - self.cost.fast_load_s(c),
                           self.cost.fast_load_s(c))
            return
        # its shard bytes now belong to the instance
        ld = self.loading.pop(p.prewarm_id, None)
        end = ld[1] if ld is not None else self.kept_copy_end.pop(p.prewarm_id, now_s)
        if end <= now_s:
            counts["hit"] += 1
            ready = now_s + self.cost.activation_s
        else:
            counts["loading"] += 1
            ready = end + self.cost.activation_s
            self.copy_end[ist.instance_id] = end
            for g in gpus:  # the copy now serves an instance: it can no longer be dropped
                self.link_hold[g] = max(self.link_hold[g], end)
        self._push(ready, _EV_READY, inst, inst.version)

    def _load(self, inst: EngineInst, not_before_s: float, copy_s: float, then_s: float = 0.0) -> None:
        """A cold instance's weights are copied over its GPUs' links, from ``not_before_s`` or when the links are
        free, taking them until the copy ends; the instance is ready ``then_s`` later (its activation)."""
        gpus = inst.st.gpus
        loaded = max([not_before_s] + [self.link_free[g] for g in gpus]) + copy_s
        for g in gpus:
            self.link_free[g] = loaded
            self.link_hold[g] = max(self.link_hold[g], loaded)
        self.copy_end[inst.st.instance_id] = loaded
        self._push(loaded + then_s, _EV_READY, inst, inst.version)

    def stop_instance(self, ist: InstanceState, now_s: float) -> None:
        inst = self.insts.get(ist.instance_id)
        if inst is not None:
            # its weights stay where they were but leave the memory accounting: a Prewarm that keeps them (the
            # driver tells keep_prewarm) counts them again, and otherwise they are evicted
            end = self.copy_end.get(ist.instance_id, now_s)
            if end > now_s:
                self.kept_copying[ist.instance_id] = end
            self._remove(inst, now_s)

    def _engine_up(self, inst: EngineInst, t: float) -> None:
        """A fresh engine process on CPU workers is up (``BatchEngines.start_engine``): it loads the weights over
        its link, as a fresh vLLM engine's fast loader does, and is ready."""
        self._load(inst, t, self.cost.fast_load_s(inst.cost))

    def _remove(self, inst: EngineInst, t: float) -> None:
        st = inst.st
        self.engines.remove(inst, t)
        self.copy_end.pop(st.instance_id, None)
        # GPU time is measured over the replayed span only (the warm-up is not counted)
        for g in st.gpus:
            self.gpu_holders[g] -= 1
            if not self.gpu_holders[g]:
                self.gpu_seconds += max(t - max(self.gpu_held_since[g], self.clock0), 0.0)

    def set_kv_target(self, ist: InstanceState, free_blocks: int, now_s: float) -> None:
        inst = self.insts.get(ist.instance_id)
        if inst is not None and inst.ready:
            self.engines.remap(inst)

    def dedicate_instance(self, ist: InstanceState, now_s: float) -> None:
        inst = self.insts.get(ist.instance_id)
        if inst is not None and inst.ready:  # the engine admits against kv_blocks_total, raised by the driver
            self.engines.remap(inst)

    def send(self, rid: int, ist: InstanceState, now_s: float) -> None:
        if not self.engines.admit(self.insts[ist.instance_id], rid, now_s):
            # refused as a live worker refuses it (PromptTooLongError, NoRoomHereError): at once, sent on or
            # unanswered; the driver's routing loop this is called from goes on with the queue
            self._refused(self.insts[ist.instance_id], rid, now_s)

    def _refused(self, inst: EngineInst, rid: int, t: float) -> None:
        """A request its engine refused: at admission (``send``), or queued once it can never fit beside the
        engines serving on its GPUs (``KvMemory._refuse_never_fitting``). Refused by an instance that shares its
        GPUs, it goes on to one of the model's instances that serves alone, as the live controller sends on a
        ``NoRoomHereError`` (``PolicyDriver.reroute``); otherwise it stays unanswered."""
        if self.driver.reroute(inst.st.model, rid, inst.st.instance_id, t):
            return
        self.refused.append(rid)
        self.open_reqs -= 1
        self.driver.request_finished(inst.st.model, inst.st.instance_id, t, route=False, request=rid)

    def fail(self, rid: int, error: BaseException, now_s: float) -> None:
        self.open_reqs -= 1  # never answered

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
        c = self.counts["measured"]
        r = summarize(self.policy_name, self.names, arr, first, fin, mdl, out, slo[mdl] if len(mdl) else slo[:0],
                      duration_s=self.workload.duration_s, end_s=end - t0, gpu_seconds=self.gpu_seconds,
                      gpu_seconds_holding=self.gpu_seconds_holding, starts=c, evictions=c["evictions"],
                      migrated=c["migrated"], unanswered_ttft_s=self.cfg.unanswered_ttft_s,
                      n_gpus=len(self.state.gpus), refused=sum(rid >= k for rid in self.refused))
        if self.warmup_s > 0:
            r.summary["warmup"] = {"requests": k, "refused": sum(rid < k for rid in self.refused),
                                   **start_summary(self.counts["warmup"], hit_rate=False)}
        return r


def simulate(workload: Workload, served: list[ServedModel], policy: str, *, config: SimConfig = SimConfig(),
             cost: CostModel | None = None, progress=None, history: dict | None = None) -> RunResult:
    """Run one policy over one workload; see ``Simulator``."""
    sim = Simulator(workload, served, policy, config=config, cost=cost, progress=progress, history=history)
    r = sim.run()
    if sim.shared_search is not None:
        r.summary["shared_layout"] = sim.shared_search
    if sim.dedicated_layout is not None:
        r.summary["dedicated_layout"] = sim.dedicated_layout
    return r
