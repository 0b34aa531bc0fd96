"""The simulated engine of each instance: vLLM-like continuous batching at iteration level.

An instance alternates prefill iterations with decode steps, as vLLM 0.6 does without chunked prefill (the
paper's artifact): whenever requests wait and one more fits, a prefill iteration admits waiting requests, oldest
first, while the batch stays within ``max_seqs`` running sequences (vLLM --max-num-seqs, 256), the prompts within
``max_batched_tokens`` (--max-num-batched-tokens) and their KV blocks within the blocks mapped for the instance;
its time is ``CostModel.prefill_s`` of the batch's prompt tokens, and decoding pauses meanwhile. A decode step of
n running sequences takes ``CostModel.decode_step_s(c, n, context_tokens)``: the small-batch step (or the weight
read, whichever is longer) plus reading the batch's KV cache (every sequence's prompt + tokens generated so far)
at the GPU's memory bandwidth, per GPU share for tensor parallelism. Between two changes of the batch every
running request advances one token per step; the context grows by n tokens a step, so the step time grows
linearly in progress and the time of a run of steps is integrated exactly (``_span_s``, ``_steps_in``).

Instances sharing a GPU (the `shared` baseline) time-share it: each iteration takes as many times longer as
there are busy instances on its busiest GPU (``_reslow``; ``CostModel.colocation_interference`` "phase" counts
only those in the same phase, "none" none, as the range around that rule). CPU workers also share their server's cores
(``GpuType.host_cores``, from `warmserve calibrate`): an iteration then takes ``host_slowdown(n)`` times longer
again, n the server's devices with a busy instance (GPUs share no compute: the term is 1). A fresh engine
process starting there computes too (``start_engine``, phase ``STARTING``): it counts as busy, and its start
stretches as the factor changes. A decode run or a start is re-timed whenever its factor changes, and so is a
prefill iteration where cores are shared; on a time-shared GPU a prefill iteration keeps the factor it started
with (the `shared` baseline's figures were measured under that rule). KV blocks for prompt + output - 1 tokens
(``KV_BLOCK_TOKENS`` tokens each; the last token sampled is never fed back, so it has no K/V, as the live engine
reserves) are reserved at admission, so a request is never preempted: vLLM admits on the
prompt's blocks and preempts (recomputes) the newest request when the cache fills, so this admits somewhat fewer
sequences than vLLM when KV memory binds and never pays a recomputation. An instance maps KV pages up to the
policy's target and grows the mapping from free GPU memory when a request needs it; the pages mapped while
admitting cost ``CostModel.kv_map_s_per_gib`` per GiB (per GPU, the GPUs mapping in parallel), added to the
prefill iteration that admitted the request (found in review: the mapping was instant), for an engine that maps
lazily (``EngineInst.lazy_map``: warmserve's prewarmed engines; a vanilla vLLM engine allocates its cache inside
its initialisation). A request whose prompt + output - 1 tokens need more blocks than the instance can ever hold
is refused when it is routed there (``admit``), as the live engine refuses it. Instances whose caps together pass
what their GPUs hold (co-served shares raised to the model's context) take turns after the live engines' rule for
one pool: one that holds no sequence and cannot map its next takes back its neighbours' free mapped blocks, and
until it runs they map none ahead and give back what their finished requests free (``_take_back``). Not modelled:
live, a stalled engine gives back its own partial mapping too and is retried on its worker's idle turns (here it
keeps what it mapped and is woken at once), and an engine without a policy target keeps 8 free blocks mapped ahead
(``engine.DEFAULT_TARGET_FREE_BLOCKS``) where this one keeps its whole cap.

``ENGINE_MODELS``: "vllm" (the above) or "fluid", the simulator's earlier model kept for comparison: the batch
capped at the policy's planning capacity B instead of the engine's limits, no token budget and a decode step that
does not depend on the context (the paper's flat 15/20/30 ms).

``--chunked-prefill-tokens N`` (vLLM --enable-chunked-prefill) replaces prefill iterations by engine steps of
N tokens: the running batch's decode tokens first, prompt chunks (oldest first) in the rest.

The interface the simulator uses is small (``add``, ``ready``, ``admit``, ``event``, ``remove``, ``retry_held``,
``remap``, ``drop_requests``, ``start_engine``); the KV memory part is ``engine_kv.KvMemory``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from warmserve.errors import InvalidArgumentError
from warmserve.policy.state import InstanceState
from warmserve.sim.costmodel import GIB, CostModel, ModelCost
from warmserve.sim.engine_kv import KvMemory

IDLE, DECODE, PREFILL, STARTING = 0, 1, 2, 3
#: the engine models ``SimConfig.engine_model`` may name (see the module doc)
ENGINE_MODELS = ("vllm", "fluid")


def check_fluid_steps(cost: CostModel, costs: dict[str, ModelCost], max_batch: int) -> None:
    """Refuse a cost profile whose context-free decode step is 0 s at some batch of 1 to ``max_batch``, under the
    "fluid" model (the vLLM-like one adds the weight read, never 0): its steps per second would be infinite.
    Found in review: such a profile (times >= 0 pass ``profile_check``) ended the run in a ZeroDivisionError."""
    for name, c in costs.items():
        zero = next((b for b in range(1, max_batch + 1) if cost.decode_step_s(c, b) <= 0), None)
        if zero is not None:
            raise InvalidArgumentError(
                f"model {name!r}: the cost profile gives a decode step of 0 s at a batch of {zero}, which the "
                f"'fluid' engine model cannot run (infinitely many steps per second): give decode_step_s.base_s "
                f"> 0 (or a decode_table above 0 s) in the profile, or use --engine-model vllm",
                model=name, batch=zero)


class EngineInst:
    """The simulated engine of one instance (the policy sees its ``st``)."""

    __slots__ = ("st", "mi", "cost", "waiting", "running", "progress", "t_last", "phase", "pf_batch", "version",
                 "slow", "kv_used", "step_cache", "shard", "block_bytes", "ready", "ctx_base", "ctx_of", "kv_s",
                 "wake", "pf_left", "chunk", "work_left", "lazy_map", "map_s", "pool_at",
                 "pool_blocks")

    def __init__(self, st: InstanceState, mi: int, cost: ModelCost, shard: int, block_bytes: int, t: float):
        self.st = st
        self.mi = mi
        self.cost = cost
        self.waiting: deque[int] = deque()
        self.running: list[tuple[float, int]] = []  # heap of (progress at which it finishes, request)
        self.progress = 0.0  # decode steps done since creation (fluid)
        self.t_last = t
        self.phase = IDLE
        self.pf_batch: list[int] = []
        self.version = 0  # bumped whenever its pending event is superseded
        self.slow = 1
        self.kv_used = 0
        self.step_cache: dict[int, float] = {}
        self.shard = shard
        self.block_bytes = block_bytes
        self.ready = False
        #: the running batch's KV tokens at progress p are ctx_base + len(running) x p (see ``_span_s``)
        self.ctx_base = 0.0
        self.ctx_of: dict[int, float] = {}  # request -> its share of ctx_base
        #: seconds per KV token a decode step reads (0: the step does not depend on the context)
        self.kv_s = 0.0
        #: its pending event is a step boundary after new requests arrived, not the end of an iteration
        self.wake = False
        #: chunked prefill: prompt tokens each admitted request still has to prefill, and this step's chunks
        self.pf_left: dict[int, int] = {}
        self.chunk: list[tuple[int, int]] = []
        #: seconds of lone-process work left (at slow 1) in a fresh engine's start (``STARTING``) or, where CPU
        #: workers share cores, in the prefill iteration under way; ``t_last`` is when it was last counted
        self.work_left = 0.0
        #: its KV pages are mapped on demand, each mapping at admission charged to the prefill (a warm engine);
        #: False: allocated with the engine (vanilla vLLM), uncharged
        self.lazy_map = True
        #: seconds of KV mapping done while admitting, owed by the next prefill iteration
        self.map_s = 0.0
        #: ``KvMemory.max_blocks``' pool part (blocks its GPUs hold beside every engine's shard), as of the
        #: engines' ``members`` count ``pool_at``
        self.pool_at = -1
        self.pool_blocks = 0


class BatchEngines(KvMemory):
    """The engines of all instances of a simulated cluster, over shared GPU memory.

    ``push(t, inst)`` schedules ``event(inst, t)`` (the simulator drops it when ``inst.version`` moved on);
    ``on_first(rid, t)`` and ``on_complete(inst, rid, t)`` report a request's first token and its end.
    ``gpu_used`` (bytes held per GPU, shared with the simulator's prewarms) and ``gpu_total`` are the memory."""

    def __init__(self, cost: CostModel, max_batch: int, prompt: list[int], output: list[int], blocks: list[int],
                 gpu_total: list[int], gpu_used: list[int], push, on_first, on_complete, *, kv_read: bool = True,
                 max_batched_tokens: int = 0, chunked_prefill_tokens: int = 0, server_gpus=None, on_started=None,
                 on_refused=None, kv_map_s_per_gib: float | None = None):
        self.cost = cost
        #: colocated instances share a GPU by phase (``CostModel.colocation_interference`` "phase"): a change
        #: between prefill and decode re-times the neighbours too, not only turning busy or idle
        self.by_phase = cost.colocation_interference == "phase"
        #: seconds per GiB (per GPU) a lazily mapping engine pays for KV pages mapped while admitting; None: the
        #: cost model's ``kv_map_s_per_gib``
        self.kv_map_s_per_byte = (cost.kv_map_s_per_gib if kv_map_s_per_gib is None else kv_map_s_per_gib) / GIB
        #: ``server_gpus(g)``: the GPUs of ``g``'s server, whose CPU workers share its cores
        #: (``GpuType.host_cores``); None: every GPU on one server
        self.server_gpus = server_gpus or (lambda g: range(len(self.gpu_insts)))
        #: most running sequences per engine (vLLM --max-num-seqs)
        self.max_batch = max_batch
        #: decode steps read the batch's KV cache (False: the "fluid" model's context-free step)
        self.kv_read = kv_read
        #: most prompt tokens one prefill iteration takes (vLLM --max-num-batched-tokens; 0: no limit); the
        #: oldest waiting request is always admitted alone if its prompt alone is longer
        self.max_batched_tokens = max_batched_tokens
        #: chunked prefill (vLLM --enable-chunked-prefill): tokens per engine step, decode tokens first, prompt
        #: chunks in the rest; 0: off (prefill iterations pause decoding)
        self.chunked_prefill_tokens = chunked_prefill_tokens
        self.prompt, self.output, self.blocks = prompt, output, blocks
        self.gpu_total, self.gpu_used = gpu_total, gpu_used
        self.gpu_insts: list[list[EngineInst]] = [[] for _ in gpu_total]
        self.push, self.on_first, self.on_complete = push, on_first, on_complete
        #: ``on_refused(inst, rid, t)``: a queued request ended unanswered, never to fit (``_refuse_never_fitting``)
        self.on_refused = on_refused
        #: ``on_started(inst, t)``: a fresh engine process begun by ``start_engine`` is up
        self.on_started = on_started
        self.insts: dict[str, EngineInst] = {}
        #: engines that hold no sequence and could not map blocks for their next (``_take``), in the order they
        #: stalled: until each runs, the engines on its GPUs map none ahead (``KvMemory._starved_near``)
        self.stalled: dict[EngineInst, None] = {}
        #: bumped whenever an engine joins or leaves ``gpu_insts`` (``KvMemory.max_blocks`` caches by it)
        self.members = 0

    # -- lifecycle ----------------------------------------------------------------------------------------

    def add(self, st: InstanceState, mi: int, cost: ModelCost, shard: int, block_bytes: int, t: float) -> EngineInst:
        inst = EngineInst(st, mi, cost, shard, block_bytes, t)
        if self.kv_read:
            inst.kv_s = cost.kv_bytes_per_token / cost.tp / self.cost.gpu.decode_read_bytes_per_s
        self.insts[st.instance_id] = inst
        for g in st.gpus:
            while len(self.gpu_insts) <= g:  # GPUs that joined after the start
                self.gpu_insts.append([])
            self.gpu_insts[g].append(inst)
        self.members += 1
        return inst

    def start_engine(self, inst: EngineInst, work_s: float, t: float) -> None:
        """A fresh engine process starts for ``inst`` on CPU workers: ``work_s`` seconds as a lone process
        (interpreter, imports), stretched by its server's host factor as it changes; it computes, so it counts
        as a busy device meanwhile. ``on_started`` follows."""
        inst.phase = STARTING
        self._reslow(inst, t)
        inst.version += 1
        self._push_work(inst, work_s, t)

    def ready(self, inst: EngineInst, t: float) -> None:
        inst.ready = True
        inst.t_last = t
        self.remap(inst)
        self.schedule(inst, t)

    def remove(self, inst: EngineInst, t: float) -> None:
        """The instance is gone: its weights and mapped KV blocks leave the GPUs' memory, and its busy neighbours
        get their time share back at once (their decode runs re-timed)."""
        st = inst.st
        self.insts.pop(st.instance_id, None)
        self.stalled.pop(inst, None)
        inst.version += 1
        if inst.phase != IDLE:
            # re-timed while it is still listed on its GPUs, idle: ``_reslow`` skips its neighbours when it finds
            # it alone on them (found in review: removed first, a lone survivor kept half speed until it idled)
            inst.phase = IDLE
            self._reslow(inst, t)
        b = inst.shard + st.kv_blocks_mapped * inst.block_bytes
        for g in st.gpus:
            self.gpu_used[g] -= b
            self.gpu_insts[g].remove(inst)
        self.members += 1
        st.kv_blocks_mapped = 0

    def retry_held(self, t: float) -> None:
        """Requests held back for KV memory get another chance (prewarms may have been evicted): an idle engine
        schedules now, a decoding one at the end of its step under way once its oldest waiting request fits
        (found in review: only idle ones were woken, so a decoding one held it until its first finisher)."""
        for inst in list(self.insts.values()):  # a refusal in ``schedule`` may stop a draining one
            if not (inst.waiting and inst.ready) or inst.st.instance_id not in self.insts:
                continue
            if inst.phase == IDLE:
                self.schedule(inst, t)
            elif inst.phase == DECODE and not inst.wake and self._fits(inst, inst.waiting[0]):
                self._wake(inst, t)

    def _fits(self, inst: EngineInst, rid: int) -> bool:
        """``rid`` would be admitted now: a sequence slot is free and its KV blocks fit in the mapping as ``_take``
        may grow it (``_room``)."""
        return len(inst.running) < self.max_batch and inst.kv_used + self.blocks[rid] <= self._room(inst)

    # -- iterations ---------------------------------------------------------------------------------------

    def _base_step_s(self, inst: EngineInst, b: int) -> float:
        """The context-free part of a decode step of ``b`` sequences (time-sharing not included)."""
        s = inst.step_cache.get(b)
        if s is None:
            s = self.cost.decode_step_s(inst.cost, b, 0 if self.kv_read else None)
            inst.step_cache[b] = s
        return s

    def _span_s(self, inst: EngineInst, steps: float) -> float:
        """Seconds ``steps`` decode steps take from the instance's progress, the batch unchanged: each step costs
        a + kv_s x C(p) with C(p) = ctx_base + n x p the KV tokens read at progress p, integrated over
        [p, p + steps]: a x D + kv_s x (ctx_base x D + n x D x (2p + D) / 2)."""
        n = len(inst.running)
        d = steps
        t = self._base_step_s(inst, n) * d
        if inst.kv_s:
            t += inst.kv_s * (inst.ctx_base * d + n * d * (2 * inst.progress + d) / 2)
        return t * inst.slow

    def _steps_in(self, inst: EngineInst, dt: float) -> float:
        """Decode steps done in ``dt`` seconds from the instance's progress (the inverse of ``_span_s``): the root
        of (kv_s n / 2) D^2 + b D = dt / slow, b the step time at the current progress, in its stable form."""
        n = len(inst.running)
        x = dt / inst.slow
        b = self._base_step_s(inst, n)
        if not inst.kv_s:
            return x / b
        b += inst.kv_s * (inst.ctx_base + n * inst.progress)
        return 2 * x / (b + math.sqrt(b * b + 2 * inst.kv_s * n * x))

    def _advance(self, inst: EngineInst, t: float) -> None:
        if inst.phase == DECODE and inst.running:
            inst.progress += self._steps_in(inst, t - inst.t_last)
        inst.t_last = t

    def _to_step_end_s(self, inst: EngineInst) -> float:
        """Seconds to the end of the decode step under way (0 when not decoding). Every running request joined at
        a step's end, so steps end where the first finisher's steps do: at progress f0 - k, k whole."""
        if inst.phase != DECODE or not inst.running:
            return 0.0
        d = (inst.running[0][0] - inst.progress) % 1.0
        return 0.0 if d < 1e-9 or d > 1.0 - 1e-9 else self._span_s(inst, d)

    def admit(self, inst: EngineInst, rid: int, t: float) -> bool:
        """``rid`` joins the instance's waiting queue. An idle engine schedules at once, a decoding one at the end
        of the step under way (vLLM schedules between steps; found in review: the prefill cut into the step,
        understating TTFT by up to a step), through an event after the current driver call: requests routed at the
        same instant (a queue drained when the instance turned ready) are then prefilled together, as vLLM's
        scheduler takes everything that waits at its next step. False: refused, not queued: its prompt + output
        need more KV blocks than the instance can ever hold (``max_blocks``), as the live engine refuses it
        (``PromptTooLongError``; found in review: such a request waited in the queue until the run ended)."""
        if self.blocks[rid] > self.max_blocks(inst):
            return False
        inst.waiting.append(rid)
        if inst.ready and inst.phase != PREFILL and not inst.wake:
            self._wake(inst, t)
        return True

    def _wake(self, inst: EngineInst, t: float) -> None:
        """Schedule the instance at the end of its decode step under way (now when it is idle)."""
        self._advance(inst, t)
        inst.wake = True
        inst.version += 1
        self.push(t + self._to_step_end_s(inst), inst)

    def schedule(self, inst: EngineInst, t: float) -> None:
        """Choose the instance's next iteration and push the event that ends it."""
        old = inst.phase
        inst.wake = False
        inst.version += 1
        if self.chunked_prefill_tokens and self._schedule_chunk(inst, t, old):
            return
        waiting, prompt = inst.waiting, self.prompt  # read per admitted request below
        if waiting and len(inst.running) < self.max_batch and not self.chunked_prefill_tokens:
            batch = []
            tokens = 0
            room = self.max_batch - len(inst.running)
            budget = self.max_batched_tokens or math.inf
            while waiting and len(batch) < room:
                rid = waiting[0]
                if batch and tokens + prompt[rid] > budget:
                    break
                if not self._take(inst, rid):
                    if self._refuse_never_fitting(inst, rid, t):
                        if inst.st.instance_id not in self.insts:
                            return  # it was draining, and that was its last request: stopped
                        continue
                    break
                waiting.popleft()
                batch.append(rid)
                tokens += prompt[rid]
            if batch:
                inst.pf_batch = batch
                inst.phase = PREFILL
                if old == IDLE or self.by_phase and old != PREFILL:
                    self._reslow(inst, t)
                map_s, inst.map_s = inst.map_s, 0.0
                self._push_work(inst, self.cost.prefill_batch_s(inst.cost, [prompt[r] for r in batch]) + map_s, t)
                return
        if inst.running:
            inst.phase = DECODE
            if old == IDLE or self.by_phase and old != DECODE:
                self._reslow(inst, t)
            self.push(t + max(self._span_s(inst, inst.running[0][0] - inst.progress), 0.0), inst)
            return
        inst.phase = IDLE
        if old != IDLE:
            self._reslow(inst, t)

    def _schedule_chunk(self, inst: EngineInst, t: float, old: int) -> bool:
        """Chunked prefill: one engine step of the running batch's decode tokens plus prompt chunks, oldest
        first, up to ``chunked_prefill_tokens`` tokens. Its time is the decode step plus the per-token part of a
        prefill of the chunks (the step's fixed part, the weight read, is the decode step's); with nothing
        decoding, a prefill of the chunks. False: no prompt to prefill (a plain decode run or idle follows)."""
        n = len(inst.running)
        budget = max(self.chunked_prefill_tokens - n, 1)
        queued = sum(inst.pf_left.values())
        while inst.waiting and queued < budget and n + len(inst.pf_left) < self.max_batch:
            rid = inst.waiting[0]
            if not self._take(inst, rid):
                if self._refuse_never_fitting(inst, rid, t):
                    if inst.st.instance_id not in self.insts:
                        return True  # stopped (as in ``schedule``)
                    continue
                break
            inst.waiting.popleft()
            inst.pf_left[rid] = self.prompt[rid]
            inst.pf_batch.append(rid)
            queued += self.prompt[rid]
        if not inst.pf_left:
            return False
        chunk, tokens = [], 0
        for rid in inst.pf_batch:
            if tokens >= budget:
                break
            k = min(inst.pf_left[rid], budget - tokens)
            chunk.append((rid, k))
            tokens += k
        parts = [(self.prompt[rid] - inst.pf_left[rid], k) for rid, k in chunk]  # (cached offset, tokens)
        inst.chunk = chunk
        inst.phase = PREFILL
        if old == IDLE or self.by_phase and old != PREFILL:
            self._reslow(inst, t)
        c = inst.cost
        if n:
            # the fixed part as prefill_batch_s splits it (found in review: prefill_s(c, 0) read a measured table
            # at its first point, 5-15 ms past the fixed part on the replay's profile, so each mixed step was short)
            dt = self._span_s(inst, 1.0) + (self.cost.prefill_chunks_s(c, parts)
                                            - self.cost.prefill_fixed_part_s(c)) * inst.slow
        else:
            dt = self.cost.prefill_chunks_s(c, parts) * inst.slow
        dt += inst.map_s * inst.slow
        inst.map_s = 0.0
        self._push_work(inst, dt / inst.slow, t, dt)
        return True

    def _push_work(self, inst: EngineInst, work_s: float, t: float, dt: float | None = None) -> None:
        """Push the end of ``work_s`` lone-process seconds from ``t``, ``dt`` = ``work_s`` x ``inst.slow`` (a
        start or a prefill iteration, re-timed by ``_set_slow`` when the pace changes)."""
        inst.work_left = work_s
        inst.t_last = t
        self.push(t + (work_s * inst.slow if dt is None else dt), inst)

    def _finish_due(self, inst: EngineInst, t: float) -> None:
        """Complete the running requests whose last step is done at the instance's progress."""
        run = inst.running
        lim = inst.progress + 1e-9
        while run and run[0][0] <= lim:
            _, rid = heapq.heappop(run)
            inst.ctx_base -= inst.ctx_of.pop(rid, 0.0)
            self._complete(inst, rid, t)
        if not run:
            inst.ctx_base = 0.0  # no drift of rounding errors into the next batch

    def _chunk_done(self, inst: EngineInst, t: float) -> None:
        """A chunked step ended: the running batch made one step, the chunks were prefilled."""
        inst.t_last = t
        run = inst.running
        if run:
            inst.progress += 1.0
            self._finish_due(inst, t)
        for rid, k in inst.chunk:
            inst.pf_left[rid] -= k
            if inst.pf_left[rid] > 0:
                continue
            del inst.pf_left[rid]
            inst.pf_batch.remove(rid)
            self._prefilled(inst, rid, t)
        inst.chunk = []

    def _prefilled(self, inst: EngineInst, rid: int, t: float) -> None:
        """``rid``'s prompt is prefilled: its first token is out; it decodes from here (or ends)."""
        self.on_first(rid, t)
        out = self.output[rid]
        if out <= 1:
            self._complete(inst, rid, t)
            return
        heapq.heappush(inst.running, (inst.progress + out - 1, rid))
        # step k after now (progress p in [now + k, now + k + 1]) reads the prompt, the first token and k more:
        # prompt + 1 + k. C(p) = prompt + 0.5 + (p - now) integrates to exactly that over the step, so a run of
        # steps costs what the steps one by one cost
        c = self.prompt[rid] + 0.5 - inst.progress
        inst.ctx_of[rid] = c
        inst.ctx_base += c

    def event(self, inst: EngineInst, t: float) -> bool:
        """The instance's current iteration ended at ``t``: a prefill (first tokens) or a decode run up to its
        first finisher (or the end of the step under way after an arrival, ``wake``). Finished requests are reported;
        the next iteration is scheduled. False: it was a fresh engine's start that ended
        (``on_started``), no iteration."""
        if inst.phase == STARTING:
            inst.phase = IDLE
            inst.work_left = 0.0
            self._reslow(inst, t)
            self.on_started(inst, t)
            return False
        if inst.wake:
            inst.wake = False
            self._advance(inst, t)
            run = inst.running
            if run and abs(inst.progress - run[0][0]) < 1e-6:
                inst.progress = run[0][0]  # the step that ended was the first finisher's last
            self._finish_due(inst, t)
        elif inst.phase == PREFILL and self.chunked_prefill_tokens:
            self._chunk_done(inst, t)
        elif inst.phase == PREFILL:
            inst.t_last = t
            for rid in inst.pf_batch:
                self._prefilled(inst, rid, t)
            inst.pf_batch = []
        else:
            self._advance(inst, t)
            run = inst.running
            # the batch has not changed since this event was pushed, so its first finisher is done exactly
            if run and inst.progress < run[0][0]:
                inst.progress = run[0][0]
            self._finish_due(inst, t)
        if inst.st.instance_id in self.insts:
            self.schedule(inst, t)
        return True

    def _complete(self, inst: EngineInst, rid: int, t: float) -> None:
        inst.kv_used -= self.blocks[rid]
        s = inst.st
        s.kv_blocks_used = inst.kv_used
        starved = self._starved_near(inst)
        if starved:
            self._give_back(inst)  # what the request held goes to the stalled neighbours, who try again now
            for o in starved:
                if o.ready and o.phase == IDLE:
                    self.schedule(o, t)
        elif s.kv_free_target is not None:
            self.remap(inst)
        self.on_complete(inst, rid, t)

    def drop_requests(self, inst: EngineInst, t: float) -> list[tuple[int, int]]:
        """Every request on the instance (waiting, in prefill, running), for a lost or migrated instance, with the
        tokens each has out (0 before its first); it stops. A running request's tokens are counted at the
        instance's progress at ``t``: one at its prefill and one a whole decode step (a step under way is lost),
        at most all but its last (one whose last step ended at ``t`` but whose event has not run yet)."""
        if inst.phase == DECODE:
            self._advance(inst, t)
        p = inst.progress + 1e-9
        out = self.output
        taken = [(rid, 0) for rid in inst.waiting] + [(rid, 0) for rid in inst.pf_batch] + [
            (rid, out[rid] - max(math.ceil(f - p), 1)) for f, rid in sorted(inst.running)]
        inst.waiting.clear()
        inst.pf_batch = []
        inst.pf_left.clear()
        inst.chunk = []
        inst.running = []
        inst.ctx_of.clear()
        inst.ctx_base = 0.0
        return taken

    def host_busy(self, gpu: int) -> int:
        """Devices computing on ``gpu``'s server: those with a busy instance (a fresh engine starting included)."""
        gi = self.gpu_insts
        return sum(1 for g in self.server_gpus(gpu) if g < len(gi) and any(x.phase != IDLE for x in gi[g]))

    def _reslow(self, inst: EngineInst, t: float) -> None:
        """An instance turned busy or idle: instances sharing a GPU with it get a new time share, and where CPU
        workers share their server's cores, every instance on its server a new host factor."""
        gi = self.gpu_insts
        host = 1.0
        if self.cost.gpu.host_cores:
            # a tensor-parallel group stays within one server, so its first GPU names the server, and every
            # instance affected is on that server: one host factor for all
            gpus = [g for g in self.server_gpus(inst.st.gpus[0]) if g < len(gi)]
            host = self.cost.gpu.host_slowdown(self.host_busy(inst.st.gpus[0]))
        elif all(len(gi[g]) <= 1 for g in inst.st.gpus):
            inst.slow = 1
            return
        else:
            gpus = inst.st.gpus
        affected = {id(o): o for g in gpus for o in gi[g]}
        affected[id(inst)] = inst
        self._set_slow(affected.values(), t, inst, host)

    def _set_slow(self, insts, t: float, inst: EngineInst, host: float) -> None:
        """Each of ``insts`` runs at its GPU's time share (instances iterating on its busiest GPU) times their
        server's host factor ``host``; a decode run or an engine start whose pace changed is re-timed (``inst``, whose
        own iteration is being chosen, is not pushed here). A fresh engine starting competes for the server's cores, not
        for its GPU: it counts in the host factor only."""
        gi = self.gpu_insts
        rule = self.cost.colocation_interference
        for o in insts:
            if rule == "none":
                new = 1
            elif rule == "phase" and o.phase in (DECODE, PREFILL):
                new = max(max(sum(1 for x in gi[g] if x.phase == o.phase) for g in o.st.gpus), 1)
            else:
                new = max(max(sum(1 for x in gi[g] if x.phase not in (IDLE, STARTING)) for g in o.st.gpus), 1)
            if host != 1.0:
                new *= host
            if new != o.slow:
                if o is not inst and (o.phase == STARTING or o.phase == PREFILL and self.cost.gpu.host_cores):
                    o.work_left -= (t - o.t_last) / o.slow
                    o.t_last = t
                    o.slow = new
                    o.version += 1
                    self.push(t + max(o.work_left, 0.0) * new, o)
                elif o.phase == DECODE and o is not inst:
                    self._advance(o, t)
                    o.slow = new
                    o.version += 1
                    # the end of the step under way for a pending ``wake``, else the first finisher, at the new pace
                    if o.wake:
                        dt = self._to_step_end_s(o)
                    else:
                        dt = self._span_s(o, o.running[0][0] - o.progress) if o.running else 0.0
                    self.push(t + max(dt, 0.0), o)
                else:
                    if o is inst and o.phase == DECODE:
                        self._advance(o, t)
                    o.slow = new
