"""Engine: a running instance of a loaded model: continuous batching over the paged KV cache in its slot.

Activation (``Engine(lm)``) copies no weight byte: the model reads zero-copy views over the slot, and the KV
cache continues in the same slot after the weights, mapped lazily (the first step runs before all of it is
mapped). ``close()`` deactivates: the KV pages go back to the pool and the weights stay, prewarmed.

Outputs are token ids. EOS and stop-token ids are included in ``token_ids`` as the final token of a request,
finish reason "stop" (the controller's text stream leaves that token out of the text, as vLLM does). Stop strings
(``SamplingParams.stop``) are not the engine's: it sees token ids, and whoever detokenizes (the controller's text
stream) cuts the text and aborts the request.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import weakref

import torch

from warmserve.engine.attention import AttnMeta, PrefillChunk, causal_mask, decode_batches, kernels_usable, paged_meta
from warmserve.engine.checks import check_counts, token_ids
from warmserve.engine.graphs import DecodeGraphs, activate_decode_graphs, resolve_cuda_graphs
from warmserve.engine.kv_cache import KVCache, KVPageMapper
from warmserve.engine.lookahead import DecodeLookahead
from warmserve.engine.model import Model
from warmserve.engine.pool_neighbours import PoolNeighbours
from warmserve.engine.sampler import draw_seed, logprobs, sample
from warmserve.engine.scheduler import FINISHED, ScheduledChunk, Scheduler, Sequence
from warmserve.engine.step_meter import DecodeStepMeter, PrefillTokenMeter, record_step
from warmserve.engine.step_output import StepOutput
from warmserve.errors import (ClosedError, DriverError, InvalidArgumentError, NoRoomHereError, PromptTooLongError,
                              fmt_bytes)
from warmserve.geometry import blocks_for_tokens
from warmserve.protocol import KvStats, SamplingParams, TokenLogprobs

#: Routes of chunked prefill's chunks with cached context on the kernel path (Engine.cached_prefill).
CACHED_PREFILL_ROUTES = ("sdpa", "tiled", "rows")

#: Default headroom of mapped free KV blocks (the controller sets the real target, PAPER.md §6).
DEFAULT_TARGET_FREE_BLOCKS = 8
#: Sequences one instance runs at once when nobody says (the policy's default instance_capacity, B).
DEFAULT_MAX_NUM_SEQS = 32

log = logging.getLogger(__name__)


class Engine(PoolNeighbours):
    def __init__(self, lm, kv_blocks: int | None = None, max_batch_tokens: int = 2048,
                 max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
                 target_free_blocks: int | None = DEFAULT_TARGET_FREE_BLOCKS, map_blocks_per_step: int = 16,
                 cuda_graphs: bool | None = None):
        """Activate a prewarmed LoadedModel.

        kv_blocks caps the KV cache (a fixed share); None = all the model can have (LoadedModel.kv_capacity_blocks:
        what the pool's pages hold after its weights), each mapped only when the pool has the pages. A request
        needing more blocks than the cap, or than the pool holds after the weights (max_kv_blocks) and those of
        the engines serving beside it, is refused.
        target_free_blocks: free blocks kept mapped ahead of demand (None = all of them, like an engine that takes
        all memory up front); blocks beyond it are unmapped after each step, so an idle instance holds little KV
        and prewarming keeps its room. While an engine on the same pool is stalled for want of blocks (this one
        included), the target counts as 0: the free blocks go back to the pool after each step and none are
        mapped ahead (``pool_starved``).
        cuda_graphs: decode steps replay CUDA graphs (engine/graphs.py): None = where they can run (a CUDA device
        with the kernels, tp = 1; off on the CPU), True = required (BackendUnavailableError where they cannot
        run), False = never. Graphs captured while the model was prewarmed (capture_decode_graphs) are used as
        they are; buckets they lack are captured here (``graph_capture_s``)."""
        check_counts(frozenset({"target_free_blocks", "kv_blocks"}), max_batch_tokens=(max_batch_tokens, 1),
                     max_num_seqs=(max_num_seqs, 1), map_blocks_per_step=(map_blocks_per_step, 1),
                     target_free_blocks=(target_free_blocks, 0), kv_blocks=(kv_blocks, 1))  # None: all (see above)
        use_graphs, why = resolve_cuda_graphs(cuda_graphs, device=lm.device, tp=lm.config.tp,
                                              kernels_ok=kernels_usable(lm.device, lm.dtype, lm.config.head_dim))
        params = lm._activate(self)
        try:
            kv_region, total_blocks, mapper = lm._kv_region(kv_blocks)
            kv = KVCache(lm.config, kv_region, total_blocks, lm.block_tokens, mapper,
                         target_free_blocks, map_blocks_per_step)
            model = Model.of(lm, params, lm.parallel)
        except BaseException:
            lm._deactivate(self)
            raise
        self.lm = lm
        # Before the first block is mapped (_init grows the cache): a failure there gives what it mapped back to
        # the pool and deactivates the model, instead of leaving blocks in the slot that every later activation's
        # map overlaps (found in review).
        self._finalizer = weakref.finalize(self, Engine._release, kv, weakref.ref(lm), id(self))
        try:
            self._init(model, kv, lm.tokenizer, lm.max_context, max_batch_tokens, max_num_seqs)
        except BaseException:
            self._finalizer()
            raise
        self.graphs_off_reason = why
        if use_graphs:
            try:
                self.graphs, self.graph_capture_s = activate_decode_graphs(lm, model, kv, max_num_seqs)
            except Exception as e:
                if cuda_graphs:
                    self.close()
                    raise
                # Graphs are an optimisation: where capture fails, the engine runs every step eagerly.
                self.graphs_off_reason = f"capture failed: {type(e).__name__}: {e}"
                log.warning("engine of %r runs without CUDA graphs: %s", lm.name, self.graphs_off_reason)

    def _init(self, model, kv, tokenizer, max_context, max_batch_tokens, max_num_seqs):
        self.model = model
        self.cfg = model.cfg
        self.kv = kv
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.scheduler = Scheduler(kv, max_batch_tokens, max_num_seqs)
        self.seqs: dict[str, Sequence] = {}
        self._aborted: list[Sequence] = []
        self._arrivals = itertools.count()
        self._rng = random.Random()
        self.device = model.device
        #: Attention through the CUDA kernels (engine/attention.py) where they run; False: the torch path.
        self.use_kernels = kernels_usable(self.device, model.dtype, self.cfg.head_dim)
        self.cached_prefill = "sdpa"
        # The union, as vLLM stops on both: the model's config names one EOS, the tokenizer's eos_token may name
        # another (a chat fine-tune's turn end).
        self.eos = set(self.cfg.eos_token_ids) | set(getattr(tokenizer, "eos_token_ids", ()) or ())
        self.closed = False
        self.num_steps = 0
        self.decode_meter = DecodeStepMeter()  # its decode steps' recent wall time and batch (worker Stats)
        self.prefill_meter = PrefillTokenMeter()  # its prefilling steps' recent cost per token (a worker's turns)
        #: Requests wait and none could start at the last step (no KV block to be had): see step().
        self.stalled = False
        #: When set, each step keeps the logits it sampled from in last_logits (request id -> [vocab] float32).
        self.record_logits = False
        self.last_logits: dict[str, torch.Tensor] = {}
        #: The decode-step CUDA graphs this engine replays (None: every step runs eagerly).
        self.graphs: DecodeGraphs | None = None
        #: Why graphs are off (None while they are on).
        self.graphs_off_reason: str | None = "not set up"
        #: Seconds this activation spent capturing graphs (0 when the prewarm had captured them all).
        self.graph_capture_s = 0.0
        #: Steps run by replaying a graph.
        self.num_graph_steps = 0
        #: Launch each greedy decode step's successor before reading its tokens back (engine/lookahead.py; an H200
        #: ran the 1b's decode 1.21-1.26x faster with it). _ahead: its state, made at its first step.
        self.decode_lookahead = True
        self._ahead: DecodeLookahead | None = None
        # The pool whose neighbours' headroom this engine may take and give (pool_starved); not a tensor-parallel
        # shard's: its ranks map together, each taking the same decision from the same engine state (a
        # neighbour's is not), and a follower steps on a thread of its own.
        self._pool = kv.mapper.slot.pool if isinstance(kv.mapper, KVPageMapper) and self.lm.config.tp == 1 else None
        if not self.pool_starved:
            self.kv.grow()
        self._join_pool()

    # ---- requests ------------------------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams | None = None,
                    output_token_ids=()) -> None:
        """Queue a request. ``output_token_ids``: tokens it generated already (a resumption elsewhere): they are
        its output so far (max_tokens, penalties and stop ids count them), recomputed with the prompt as a
        preempted sequence is, and not reported again. Seeded sampling goes on with the draws it would have made
        (a draw depends on the seed and the token's index only: sampler.draw_seed); the recomputed prefill's logits
        are about 1e-6 off the decode's, so a draw that close to a boundary can pick another token after the resume
        point (found in review: 1 of 10 seeds live), and greedy output stays the same unless its top two are as close.
        """
        self._check_open()
        # Before any use of them (found in review: a dict failed with "'dict' object has no attribute
        # 'max_tokens_defaulted'", {} ran with the defaults, a list id with "unhashable type: 'list'")
        if not isinstance(request_id, str):
            raise InvalidArgumentError(f"request_id must be a str, got {type(request_id).__name__} {request_id!r}",
                                       param="request_id")
        if params is not None and not isinstance(params, SamplingParams):
            raise InvalidArgumentError(f"params must be a SamplingParams or None, got {type(params).__name__} "
                                       f"{params!r}: from a dict, SamplingParams(**d)", param="params")
        params = params or SamplingParams()
        if request_id in self.seqs:
            raise InvalidArgumentError(f"request id {request_id!r} is already running ({len(self.seqs)} running): "
                                       "give each request an id of its own, or abort this one first",
                                       request_id=request_id)
        if any(s.request_id == request_id for s in self._aborted):
            # found in review: the id was taken again before the next step reported its abort, and the caller
            # read that "finished" output as the new request's end
            raise InvalidArgumentError(f"request id {request_id!r} was aborted and its abort is reported at the "
                                       "next step: use another id, or step first", request_id=request_id)
        prompt = token_ids(prompt_token_ids, "prompt_token_ids", request_id=request_id)
        if not prompt:
            raise InvalidArgumentError("the prompt is empty: send at least one token", request_id=request_id)
        done = token_ids(output_token_ids, "output_token_ids", request_id=request_id)
        beside = self._blocks_beside_neighbours()
        if params.max_tokens_defaulted:
            params = self._fit_defaulted(params, len(prompt), len(done), beside)
        if len(done) >= params.max_tokens:
            raise InvalidArgumentError(f"a resumption with {len(done)} tokens out and max_tokens {params.max_tokens} "
                                       f"has nothing left to generate", request_id=request_id)
        for what, ids in (("prompt_token_ids", prompt), ("output_token_ids", done)):  # which list: a resumption's
            if bad := [t for t in ids if not 0 <= t < self.cfg.vocab_size]:  # output ids are the server's own
                raise InvalidArgumentError(f"{what}: token ids {bad[:5]} are outside the vocabulary [0, "
                                           f"{self.cfg.vocab_size})", param=what, request_id=request_id)
        need = len(prompt) + params.max_tokens
        if need > self.max_context:
            raise PromptTooLongError(
                f"prompt of {len(prompt)} tokens + max_tokens {params.max_tokens} = {need} exceeds the context of "
                f"{self.max_context} tokens: shorten the prompt or lower max_tokens",
                prompt_tokens=len(prompt), max_tokens=params.max_tokens, max_context=self.max_context)
        # the last token sampled is never fed back, so it never has K/V
        blocks_needed = blocks_for_tokens(need - 1, self.kv.block_tokens)
        cap = self.max_kv_blocks
        if blocks_needed > cap:
            # A request past the cap could never get its blocks: it would wait (or hold a half prefill) forever.
            pool = self.lm.slot.pool
            if cap == self.lm.kv_pool_blocks:
                why = (f"all that its pool of {fmt_bytes(pool.total_bytes)} holds after "
                       f"{fmt_bytes(self.lm.weight_region_bytes)} of weights")
                fix, error = "serve the model from a larger pool", PromptTooLongError
            else:  # an instance with a larger share, or alone on its worker, may hold it
                why, fix = "its KV share", "give the instance more KV blocks (kv_blocks)"
                error = NoRoomHereError
            raise error(
                f"prompt of {len(prompt)} tokens + max_tokens {params.max_tokens} - 1 (the last token has no K/V) "
                f"= {need - 1} tokens need {blocks_needed} KV blocks of {self.kv.block_tokens} tokens, but this "
                f"instance holds at most {cap} "
                f"({why}): shorten the prompt, lower max_tokens or {fix}",
                prompt_tokens=len(prompt), max_tokens=params.max_tokens, kv_blocks=cap,
                blocks_needed=blocks_needed)
        if beside and blocks_needed > beside[0]:  # it would wait at the queue's head for good, and all behind it
            raise NoRoomHereError(
                f"prompt of {len(prompt)} tokens + max_tokens {params.max_tokens} - 1 = {need - 1} tokens need "
                f"{blocks_needed} KV blocks, but beside the weights of {', '.join(beside[1])} on the same pool at "
                f"most {beside[0]} are ever free: shorten the prompt, lower max_tokens or serve the model on a worker "
                f"of its own", prompt_tokens=len(prompt), max_tokens=params.max_tokens, kv_blocks=beside[0],
                blocks_needed=blocks_needed)
        gen, seed = None, 0
        if not params.greedy:
            gen = torch.Generator(device="cpu")  # seeded before each draw (_sample)
            seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        seq = Sequence(request_id, prompt, params, next(self._arrivals), gen, seed=seed)
        if done:
            seq.output, seq.num_reported = done, len(done)
            if params.logprobs is not None:  # reported with those tokens already: placeholders keep the indices
                seq.logprobs = [None] * len(done)
        self.seqs[request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> bool:
        """Stop a request; its StepOutput (finish_reason "abort") comes with the next step. False if unknown."""
        seq = self.seqs.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.finish(seq, "abort")
        self._aborted.append(seq)
        return True

    @property
    def max_kv_blocks(self) -> int:
        """The most KV blocks one request can have: the cache's cap, and no more than the pool's pages hold after
        the weights (a share may be larger; those blocks could never all be mapped)."""
        self._check_open()
        return min(self.kv.total_blocks, self.lm.kv_pool_blocks)

    # A closed engine has no work: the worker's loops ask these of every instance it still lists.
    def has_unfinished(self) -> bool:
        return not self.closed and (self.scheduler.has_unfinished() or bool(self._aborted))

    @property
    def num_running(self) -> int:
        return 0 if self.closed else len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return 0 if self.closed else len(self.scheduler.waiting)

    # ---- KV ------------------------------------------------------------------------------------------------------
    def kv_stats(self) -> KvStats:
        """Raises ClosedError once closed and released: its cache is gone (a worker answers a request for it with
        the error). A close whose release failed part way still reports the blocks it holds (``close``)."""
        if self.kv is None:  # released: closed too
            self._check_open()
        return self.kv.stats(self.scheduler.num_preemptions, self.scheduler.blocks_wanted() if self.stalled else 0)

    def set_kv_target_free_blocks(self, n: int | None) -> KvStats:
        """Keep n free blocks mapped (None: all, as target_free_blocks): unmap the rest now (pages back to the
        pool), map up to n over the next steps (or, idle on a worker, its next ticks). A driver error giving
        blocks back: a DriverError saying so; the target is set, and the blocks that stayed mapped are free ones."""
        self._check_open()
        kv, free = self.kv, self.kv.num_free_mapped
        try:
            kv.set_target_free_blocks(n)
        except DriverError as e:  # found in review: only the driver's words, no target, no blocks, no outcome
            target, left = kv.target_free_blocks, kv.num_free_mapped
            raise DriverError(
                f"the KV target is now {target} free blocks; {free} free KV blocks were mapped and giving back those "
                f"beyond it failed, {left} still mapped (driver: {e}); no request is affected: each step retries "
                f"the give-back, as does calling this again",
                **{**e.fields, "target_free_blocks": target, "kv_blocks_free_mapped": left}) from e
        kv.grow()
        return self.kv_stats()

    def raise_kv_cap(self, kv_blocks: int | None = None) -> KvStats:
        """Let the KV cache grow to ``kv_blocks`` (None: all the slot's reservation holds): a co-served instance's
        fixed share becomes a dedicated instance's whole cache (its co-residents have left). Running requests are
        untouched; new blocks are mapped as the target and the load ask."""
        self._check_open()
        check_counts(frozenset({"kv_blocks"}), kv_blocks=(kv_blocks, 1))  # found in review: "9" a bare TypeError
        region, total, _ = self.lm._kv_region(kv_blocks)
        if total < self.kv.total_blocks:
            raise InvalidArgumentError(f"the KV cap is {self.kv.total_blocks} blocks; {total} would lower it",
                                       kv_blocks=total, total_blocks=self.kv.total_blocks)
        self.kv.extend(region, total)
        self.kv.grow()
        return self.kv_stats()

    # ---- the loop ------------------------------------------------------------------------------------------------
    def step(self, max_tokens: int | None = None) -> list[StepOutput]:
        """One step of at most max_tokens tokens (None: max_batch_tokens; step_meter.turn_tokens); same outputs."""
        self._check_open()
        check_counts(frozenset({"max_tokens"}), max_tokens=(max_tokens, 1))  # 0 ran nothing yet marked a stall
        t0_s = time.perf_counter()
        outputs = [self._output(s, []) for s in self._aborted]
        self._aborted = []
        if self.stalled:
            self._take_back_headroom()
        chunks = self.scheduler.schedule(max_tokens)
        # Nothing could run: another step now would do the same until blocks come free elsewhere (a worker
        # retries it on its idle turns instead of spinning a core on it).
        self.stalled = not chunks and self.scheduler.has_unfinished()
        if self.stalled:
            refused = self._refuse_never_fitting()
            outputs += refused
            # the requests behind a refused one may run: stepped again at once, not on the idle turns of a stall
            self.stalled = self.scheduler.has_unfinished() and not refused
        if chunks:
            outputs += self._run(chunks)
            self.num_steps += 1
        # The free blocks go back while an engine on this pool can run nothing, and none are mapped ahead:
        # headroom is what it may lack (pool_starved). A driver error there is logged: the tokens are out.
        moved = self.kv.tidy(give_back_all=self.pool_starved, quiet=self.lm.config.tp == 1)
        for seq in self.scheduler.running if moved else ():
            seq.blocks = [moved.get(b, b) for b in seq.blocks]
        if chunks:
            record_step(self.decode_meter, self.prefill_meter, chunks, time.perf_counter() - t0_s)
        return outputs

    def _run(self, chunks: list[ScheduledChunk]) -> list[StepOutput]:
        g = self.graphs
        graphed = g is not None and len(chunks) <= g.max_batch and all(self._graphable(c) for c in chunks)
        self.num_graph_steps += graphed
        if graphed and self.decode_lookahead and not self.record_logits and DecodeLookahead.eligible(chunks):
            if self._ahead is None or self._ahead.graphs is not g:
                self._ahead = DecodeLookahead(g, self.kv.block_tokens)
            return self._sample(chunks, chunks, None, self._ahead.tokens(chunks, self._token))
        if self._ahead is not None:
            self._ahead.drop()
        if graphed:
            logits = g.run([(self._token(c.seq, c.start), c.start, c.seq.blocks) for c in chunks])
            sampled = [c for c in chunks if c.samples]
            if len(sampled) < len(chunks):
                logits = logits[torch.tensor([i for i, c in enumerate(chunks) if c.samples], device=self.device)]
            return self._sample(chunks, sampled, logits if sampled else None)
        T = self.kv.block_tokens
        rpb = self.kv.rows_per_block
        dev = self.device
        window = self.cfg.sliding_window
        # one-token chunks past position 0 run as decodes, whose rows must come last and contiguous; on the torch
        # path in ascending order of the keys they attend to, grouped by decode_batches
        is_dec = [c.n == 1 and c.start > 0 for c in chunks]
        dec_chunks = [c for c, d in zip(chunks, is_dec) if d]
        if not self.use_kernels:
            dec_chunks.sort(key=lambda c: min(c.start + 1, window) if window else c.start + 1)
        chunks = [c for c, d in zip(chunks, is_dec) if not d] + dec_chunks
        ids, pos, wrows = [], [], []
        prefills: list[PrefillChunk] = []
        dec: list[ScheduledChunk] = []
        paged = [] if self.use_kernels else None  # (row, start, n, blocks) the kernels compute
        row = 0
        for c in chunks:
            ids += c.seq.tokens[c.start:c.start + c.n]
            p = range(c.start, c.start + c.n)
            pos += p
            blocks = c.seq.blocks
            wrows += [blocks[i // T] * rpb + i % T for i in p]
            fresh = c.start == 0 and (not window or c.n <= window)
            if paged is not None and not fresh and (c.n == 1 or self._cached_prefill != "sdpa"):
                paged.append((row, c.start, c.n, blocks))
            elif c.n == 1 and c.start > 0:
                dec.append(c)
            elif fresh:
                prefills.append(PrefillChunk(row, c.n, 0))
            else:
                ctx = torch.arange(c.start + c.n)
                table = torch.tensor(blocks, dtype=torch.long)
                prefills.append(PrefillChunk(row, c.n, c.start, (table[ctx // T] * rpb + ctx % T).to(dev),
                                             causal_mask(c.n, c.start, window, "cpu").to(dev)))
            row += c.n
        first = row - len(dec)
        decode = decode_batches([(first + i, c.start + 1, c.seq.blocks) for i, c in enumerate(dec)], T, rpb, window,
                                dev)
        meta = AttnMeta(torch.tensor(wrows, device=dev), prefills, decode,
                        None if paged is None else paged_meta(paged, T, rpb, window, dev,
                                                                   self._cached_prefill == "tiled"))
        hidden = self.model.forward(torch.tensor(ids, device=dev), torch.tensor(pos, device=dev), meta,
                                    self.kv.rows, self.kv.layer_offsets)
        rows, sampled = [], []
        r = 0
        for c in chunks:
            if c.seq.params.prompt_logprobs is not None:
                self._prompt_logprobs(c, hidden, r)
            r += c.n
            if c.samples:
                rows.append(r - 1)
                sampled.append(c)
        logits = self.model.logits(hidden[torch.tensor(rows, device=dev)]) if sampled else None
        return self._sample(chunks, sampled, logits)

    @property
    def cached_prefill(self) -> str:
        """With use_kernels, the route of chunks of 2+ rows with cached context (chunked prefill): "sdpa" gathers
        their context and takes torch's SDPA (flash attention on tensor cores), "tiled" the tiled prefill kernel
        (each key read once per 16 query rows, scalar FMAs), "rows" one paged_attention row each. "sdpa" is the
        default because it measured 19-38x faster than "tiled" on an H200 (bench/engine/kernels-h200.json)."""
        return self._cached_prefill

    @cached_prefill.setter
    def cached_prefill(self, route: str) -> None:
        if route not in CACHED_PREFILL_ROUTES:
            raise InvalidArgumentError(f"cached_prefill must be one of {', '.join(CACHED_PREFILL_ROUTES)}; got "
                                       f"{route!r}", route=route)
        self._cached_prefill = route

    @staticmethod
    def _graphable(c: ScheduledChunk) -> bool:
        """A one-token chunk past position 0 whose hidden state nothing but sampling needs (prompt_logprobs of a
        one-token prompt chunk need it, so that step runs eagerly)."""
        return (c.n == 1 and c.start > 0
                and (c.seq.params.prompt_logprobs is None or c.start >= len(c.seq.prompt) - 1))

    @staticmethod
    def _token(seq: Sequence, i: int) -> int:
        n = len(seq.prompt)
        return seq.prompt[i] if i < n else seq.output[i - n]

    def _sample(self, chunks: list[ScheduledChunk], sampled: list[ScheduledChunk], logits: torch.Tensor | None,
                toks: list[int] | None = None) -> list[StepOutput]:
        """Sample the chunks that reach their sequence's end (a logits row each, or toks chosen), then advance all."""
        lps = [None] * len(sampled)
        if sampled and toks is None:
            seqs = [c.seq for c in sampled]
            for s in (s for s in seqs if s.generator is not None):
                s.generator.manual_seed(draw_seed(s.seed, len(s.output)))
            toks = sample(logits, [s.params for s in seqs], [s.generator for s in seqs],
                          [(s.prompt, s.output) for s in seqs], self.eos, [s.sampler_state for s in seqs])
            lps = logprobs(logits, toks, [s.params.logprobs for s in seqs])
            if self.record_logits:
                self.last_logits = {c.seq.request_id: logits[i].cpu() for i, c in enumerate(sampled)}
        for c in chunks:
            c.seq.num_computed = c.start + c.n
        return [self._append(c.seq, t, lp) for c, t, lp in zip(sampled, toks or (), lps)]

    #: Rows of prompt logits computed at once for prompt_logprobs (bounds the [rows, vocab] float32 temporary).
    PROMPT_LOGPROBS_ROWS = 256

    def _prompt_logprobs(self, c: ScheduledChunk, hidden: torch.Tensor, row: int) -> None:
        """Log-probabilities of the prompt tokens this chunk predicts (position j predicts token j + 1), once: a
        chunk recomputed after a preemption finds some or all of them already there (its chunks need not start
        where the first run's did) and computes the rest."""
        seq = c.seq
        end = min(c.start + c.n, len(seq.prompt) - 1)
        have = len(seq.prompt_logprobs)
        if not c.start <= have < end:
            return
        k = seq.params.prompt_logprobs
        for a in range(have, end, self.PROMPT_LOGPROBS_ROWS):
            b = min(end, a + self.PROMPT_LOGPROBS_ROWS)
            lg = self.model.logits(hidden[row + a - c.start:row + b - c.start])
            seq.prompt_logprobs += logprobs(lg, seq.prompt[a + 1:b + 1], [k] * (b - a))

    def _append(self, seq: Sequence, token: int, lp: TokenLogprobs | None = None) -> StepOutput:
        seq.output.append(token)
        if lp is not None:
            seq.logprobs.append(lp)
        p = seq.params
        reason, stop_reason = None, None
        # none ends it before min_tokens (vLLM's check_stop), though the sampler already holds them back till then
        if len(seq.output) >= p.min_tokens and (token in p.stop_token_set or (token in self.eos and not p.ignore_eos)):
            reason, stop_reason = "stop", token
        if reason is None and len(seq.output) >= p.max_tokens:
            reason = "length"
        if reason is not None:
            self.scheduler.finish(seq, reason, stop_reason)
            self.seqs.pop(seq.request_id, None)
        return self._output(seq, seq.output[seq.num_reported:])

    def _output(self, seq: Sequence, new: list[int]) -> StepOutput:
        lps = seq.logprobs[seq.num_reported:] if seq.params.logprobs is not None and new else None
        plps = seq.prompt_logprobs if seq.params.prompt_logprobs is not None and new and not seq.num_reported else None
        seq.num_reported = len(seq.output)
        done = seq.status == FINISHED
        return StepOutput(seq.request_id, list(new), done, seq.finish_reason if done else None, len(seq.prompt),
                          len(seq.output), seq.stop_reason, lps, plps)

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[list[int]]:
        """Run prompts to completion (a convenience over add_request/step); returns each one's output ids."""
        return self._generate(prompts, params, False)[0]

    def generate_with_logits(self, prompts: list[list[int]],
                             params: SamplingParams | None = None) -> tuple[list[list[int]], list[torch.Tensor]]:
        """generate(), and for each prompt the float32 logits its tokens were sampled from ([tokens, vocab]): what
        numerics checks compare (record_logits is on for the run)."""
        was, self.record_logits = self.record_logits, True
        try:
            return self._generate(prompts, params, True)
        finally:
            self.record_logits = was

    def _generate(self, prompts, params, logits: bool):
        if self.seqs or self._aborted:
            # its steps would run the other requests too and drop their outputs (found in review: one added
            # before ran to its end inside generate(), none of its tokens reported)
            raise InvalidArgumentError(f"generate() runs an idle engine: {len(self.seqs)} requests are running "
                                       f"and {len(self._aborted)} aborts unreported; step() until they finish, "
                                       "or add these prompts with add_request()")
        ids = [f"gen-{next(self._arrivals)}-{i}" for i in range(len(prompts))]
        out = {rid: [] for rid in ids}
        rows = {rid: [] for rid in ids}
        try:
            for rid, p in zip(ids, prompts):
                self.add_request(rid, p, params)
            pending = set(ids)
            while pending:
                for o in self.step():
                    if o.error is not None and o.request_id in out:
                        raise o.error
                    if o.request_id in out:
                        out[o.request_id] += o.token_ids
                        if o.finished:
                            pending.discard(o.request_id)
                if logits:
                    for rid, row in self.last_logits.items():
                        if rid in rows:
                            rows[rid].append(row)
                    self.last_logits = {}
        finally:
            # A prompt refused part way (or a step that raised) left the others queued, holding KV blocks and
            # giving outputs nobody asks for at later steps (found in review): they go, without an abort output.
            self._drop([rid for rid in ids if rid in self.seqs])
        return [out[r] for r in ids], [torch.stack(rows[r]) for r in ids] if logits else None

    def _drop(self, request_ids: list[str]) -> None:
        if self.closed:
            return
        for rid in request_ids:
            self.scheduler.finish(self.seqs.pop(rid), "abort")

    # ---- lifetime ------------------------------------------------------------------------------------------------
    def _check_open(self):
        if self.closed:
            raise ClosedError("this engine was closed (deactivated): activate the model again")

    def close(self) -> None:
        """Deactivate: abort everything, unmap the KV pages (back to the pool), drop the weight views. A release
        that fails part way (a driver error unmapping a page) raises, and the next close() retries what is left
        (found in review: the finalizer, dead after its first call, left the blocks mapped for good, so every later
        activation of the model overlapped them)."""
        if self.kv is None:
            return
        if not self.closed:
            for rid in list(self.seqs):
                self.abort(rid)
            self._aborted = []
            self.closed = True
            neighbours = self._neighbours()
            if neighbours is not None:
                neighbours.discard(self)
        if self._finalizer.alive:
            self._finalizer()
        else:  # its call raised: KVCache.release_all unmaps what is still mapped
            Engine._release(self.kv, weakref.ref(self.lm), id(self))
        self.graphs = None  # they stay with the prewarmed model (engine/graphs.py) for its next activation
        self.model = None
        self.kv = None
        self.scheduler = None

    @staticmethod
    def _release(kv: KVCache, lm_ref, engine_id: int) -> None:
        kv.num_used = 0
        kv.release_all()
        kv.rows = None
        lm = lm_ref()
        if lm is not None:
            lm._deactivate_id(engine_id)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

