"""The engines that serve from one page pool (co-served instances of a universal worker), and what each owes the
others: ``Engine`` mixes this in. Their KV caches map the pool's pages one by one, so an engine that can run
nothing for want of pages takes back the free blocks its neighbours keep mapped (``pool_starved``), and a request
that can never fit beside the neighbours' weights is refused, at admission or, when a neighbour came later, at
the step that finds it stuck (``_refuse_never_fitting``).

What counts as a neighbour: an open engine on the pool, a draining one included (a request refused beside it might
have fit once it stopped; the refusal is a ``NoRoomHereError``, which the controller sends on to an instance of
the model that serves alone when there is one, and otherwise answers); not a prewarm (the policy evicts it for
room), nor a tensor-parallel shard, which keeps no place here (``_pool`` None: a request beside one is admitted
and may wait for its pages)."""

from __future__ import annotations

import logging
import weakref

import msgspec

from warmserve.errors import NoRoomHereError, WarmServeError
from warmserve.geometry import blocks_for_tokens

log = logging.getLogger(__name__)

#: Per page pool, the open engines whose KV blocks are mapped from it page by page.
_ON_POOL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class PoolNeighbours:
    """Over the engine's ``_pool`` (None: no neighbours), ``lm``, ``kv``, ``scheduler``, ``seqs``, ``stalled``,
    ``closed``, ``max_kv_blocks`` and ``max_context``."""

    def _join_pool(self) -> None:
        if self._pool is not None:
            _ON_POOL.setdefault(self._pool, weakref.WeakSet()).add(self)

    def _neighbours(self):
        """The open engines on this engine's page pool (itself included), or None (a tensor-parallel shard, a
        mapper that is not page by page: ``_pool`` None)."""
        return _ON_POOL.get(self._pool) if self._pool is not None else None

    def _blocks_beside_neighbours(self) -> tuple[int, list[str]] | None:
        """(the most KV blocks this engine can ever map while the other engines on its pool serve, their names),
        or None with no neighbour. A prewarm's weights do not count: the policy evicts it for room, not them."""
        others = [e for e in self._neighbours() or () if e is not self and not e.closed]
        if not others:
            return None
        weights = self.lm.weight_region_bytes + sum(e.lm.weight_region_bytes for e in others)
        blocks = max(0, self.lm.slot.pool.total_bytes - weights) // self.lm.kv_bytes_per_block
        return blocks, sorted(e.lm.name for e in others)

    def _fit_defaulted(self, params, prompt_tokens: int, done_tokens: int, beside: tuple[int, list[str]] | None):
        """A max_tokens the server filled in (SamplingParams.max_tokens_defaulted) lowered to what this instance
        holds, its context and its KV cap, and what is ever free beside its neighbours' weights (``beside``:
        ``_blocks_beside_neighbours()``): the request ends with "length" there. Where not one more token fits
        beside them it is fitted to what the instance holds alone, so that add_request's NoRoomHereError sends it
        to an instance that serves alone (found by a fuzz: a PromptTooLongError, which is final, told the client to
        lower a max_tokens it never set). Left as it is when not one more token fits even so, so that add_request
        refuses it with the numbers."""
        cap = self.max_kv_blocks
        if beside and min(self.max_context, beside[0] * self.kv.block_tokens + 1) - prompt_tokens > done_tokens:
            cap = min(cap, beside[0])
        room = min(self.max_context, cap * self.kv.block_tokens + 1) - prompt_tokens
        if done_tokens < room < params.max_tokens:
            return msgspec.structs.replace(params, max_tokens=max(room, params.min_tokens))  # else refused there
        return params

    @property
    def pool_starved(self) -> bool:
        """An engine on this engine's page pool (this one included) could run nothing at its last step for want of
        KV blocks. Free mapped blocks are then headroom that may be all it lacks: a preempted sequence comes back
        only with blocks for its whole length, and engines that kept their free blocks mapped (any
        target_free_blocks > 0) over an empty pool waited forever, each counting its own few (found in review).
        So until it runs, no engine on the pool keeps free blocks mapped or maps any ahead of its own steps."""
        # Not one left stalled with nothing to run any more (all aborted, then never stepped again: a broken
        # instance): it would keep every neighbour from its headroom for good.
        return any(e.stalled and not e.closed and e.scheduler.has_unfinished() for e in self._neighbours() or ())

    def _take_back_headroom(self) -> None:
        """Before a stalled engine schedules again: the free blocks its neighbours keep mapped go back to the pool
        for it to map. They are taken here, not left to the neighbours' own steps, because an idle instance is not
        stepped (a worker only grows its headroom, after the steps of its tick)."""
        for e in list(self._neighbours() or ()):
            if e is not self and not e.closed:
                try:
                    e._give_back_free_blocks()
                except WarmServeError as err:  # they stay mapped and free: the neighbour's fault, not this step's
                    log.warning("a stalled engine of %r could not take back the free KV blocks of %r: %s",
                                self.lm.name, e.lm.name, err)

    def _give_back_free_blocks(self) -> None:
        kv = self.kv
        target, kv.target_free_blocks = kv.target_free_blocks, 0
        try:
            kv.shrink()
        finally:
            kv.target_free_blocks = target

    def _refuse_never_fitting(self) -> list:
        """End the waiting requests that can no longer ever get their blocks, each with a NoRoomHereError
        (``StepOutput.error``): admitted while the pool held fewer serving neighbours (or preempted since, as a
        preempted sequence needs its whole length again), they would wait at the head of the queue for good, and
        every request behind them (add_request refuses them when it knows at once)."""
        beside = self._blocks_beside_neighbours()
        if beside is None:
            return []
        out = []
        for seq in list(self.scheduler.waiting):
            need = len(seq.prompt) + seq.params.max_tokens - 1
            blocks = blocks_for_tokens(need, self.kv.block_tokens)
            if blocks <= beside[0]:
                continue
            self.seqs.pop(seq.request_id, None)
            self.scheduler.finish(seq, "error")
            o = self._output(seq, [])
            o.error = NoRoomHereError(
                f"request {seq.request_id!r}: {need} tokens need {blocks} KV blocks, but since "
                f"{', '.join(beside[1])} started serving on the same memory at most {beside[0]} are ever free: "
                f"shorten the prompt, lower max_tokens or serve the model on a worker of its own",
                prompt_tokens=len(seq.prompt), max_tokens=seq.params.max_tokens, kv_blocks=beside[0],
                blocks_needed=blocks)
            out.append(o)
        return out
