"""KV memory of the simulated engines (``engine_model.BatchEngines`` mixes it in): how many blocks an instance
may map and hold, mapping to the policy's target, reserving a request's blocks at admission, and the turns engines
take when their caps together pass what their GPUs hold (``_take_back``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from warmserve.sim.engine_model import EngineInst


class KvMemory:
    """Over ``gpu_total``/``gpu_used`` (bytes per GPU), ``gpu_insts`` (engines per GPU), ``stalled``, ``blocks``
    (KV blocks per request), ``kv_map_s_per_byte`` and ``members`` (bumped whenever an engine joins or leaves
    ``gpu_insts``), which ``BatchEngines`` holds."""

    def free_blocks(self, inst: EngineInst) -> int:
        free = min(self.gpu_total[g] - self.gpu_used[g] for g in inst.st.gpus)
        return max(free // inst.block_bytes, 0)

    def max_blocks(self, inst: EngineInst) -> int:
        """The most KV blocks one request can ever have on ``inst``, as the live engine admits: the policy's total
        for it (``Engine.max_kv_blocks``), and no more than its GPUs hold after its weights shard and those of the
        engines beside it (``Engine._blocks_beside_neighbours``; prewarms do not count, the policy evicts them).
        Every engine on the GPUs counts, one still starting or tensor-parallel too, where the live engine counts
        activated tp = 1 engines on its pool only (a request it admits there may wait for the pages)."""
        if inst.pool_at != self.members:
            # it changes only when engines come or go: recomputed on every admission, it was 6% of a run
            pool = min(self.gpu_total[g] - sum(o.shard for o in self.gpu_insts[g] if o is not inst)
                       for g in inst.st.gpus) - inst.shard
            inst.pool_at, inst.pool_blocks = self.members, max(pool // inst.block_bytes, 0)
        return min(inst.st.kv_blocks_total, inst.pool_blocks)

    def _refuse_never_fitting(self, inst: EngineInst, rid: int, t: float) -> bool:
        """``rid``, at the head of ``inst``'s queue and refused blocks by ``_take``, can never get them: admitted
        while fewer engines served on its GPUs, it leaves the queue unanswered (``on_refused``), as the live
        engine ends it with a PromptTooLongError (``Engine._refuse_never_fitting``), where it waited at the head
        for good with every request behind it. False: it may fit once blocks come free."""
        if self.blocks[rid] <= self.max_blocks(inst):
            return False
        inst.waiting.popleft()
        self.stalled.pop(inst, None)
        self.on_refused(inst, rid, t)
        return True

    def _room(self, inst: EngineInst) -> int:
        """The most KV blocks ``inst``'s mapping can reach now: what it maps, grown up to the policy's total only
        into free memory (the one growth rule of ``remap`` and ``_fits``)."""
        s = inst.st
        return max(s.kv_blocks_mapped, min(s.kv_blocks_total, s.kv_blocks_mapped + self.free_blocks(inst)))

    def remap(self, inst: EngineInst, need: int = 0) -> None:
        """Map KV blocks to the policy's target (used + free target, or everything; no more than in use while a
        neighbour is stalled, ``_take_back``), growing only into free memory (``_room``); ``need`` more blocks than
        in use are asked for by an admission."""
        s = inst.st
        tgt = s.kv_blocks_total if s.kv_free_target is None else min(s.kv_blocks_total, inst.kv_used + s.kv_free_target)
        if self._starved_near(inst):
            tgt = inst.kv_used  # no headroom mapped ahead while a neighbour can run nothing (``_take_back``)
        tgt = max(tgt, min(inst.kv_used + need, s.kv_blocks_total))
        if tgt > s.kv_blocks_mapped:
            tgt = min(tgt, self._room(inst))
        d = tgt - s.kv_blocks_mapped
        if d:
            s.kv_blocks_mapped += d
            b = d * inst.block_bytes
            for g in s.gpus:
                self.gpu_used[g] += b

    def _take(self, inst: EngineInst, rid: int) -> bool:
        """Reserve KV blocks for ``rid`` (prompt + output - 1 tokens), growing the mapping if need be; False: no
        room."""
        need = self.blocks[rid]
        if inst.kv_used + need > inst.st.kv_blocks_mapped:
            if need > self.max_blocks(inst):
                return False  # it never fits (``_refuse_never_fitting``): nothing mapped, charged or taken back
            before = inst.st.kv_blocks_mapped
            self.remap(inst, need)
            if inst.kv_used + need > inst.st.kv_blocks_mapped and inst.kv_used == 0:
                self.stalled[inst] = None
                if self._take_back(inst):
                    self.remap(inst, need)
            # Only the blocks the request lacked are this admission's to pay for; the headroom mapped with them up
            # to the policy's target is not (CONSTANTS.md), as the live engine maps the missing blocks at admission
            # and tops up its headroom after its steps (``KvCache.tidy``). Found in review: the whole growth was
            # charged, 22-26% of it headroom on paper-code.
            lacked = min(inst.st.kv_blocks_mapped, inst.kv_used + need) - before
            if inst.lazy_map and lacked > 0:
                inst.map_s += lacked * inst.block_bytes * self.kv_map_s_per_byte
            if inst.kv_used + need > inst.st.kv_blocks_mapped:
                return False
        inst.kv_used += need
        inst.st.kv_blocks_used = inst.kv_used
        self.stalled.pop(inst, None)
        return True

    def _take_back(self, inst: EngineInst) -> bool:
        """An engine that holds no sequence and cannot map blocks for its next one (stalled) takes back the free
        blocks the engines sharing its GPUs keep mapped; until it runs they map none ahead (``remap``) and give
        back what their finished requests free (``_complete``, which wakes it). The live engine's rule
        (``Engine.pool_starved``, ``_take_back_headroom``): co-served shares, each raised to one request at the
        model's context (``kv_blocks_for``), may together pass what the GPU holds, and then take turns. True if
        any went back."""
        freed = False
        for other in self._neighbours(inst):
            freed = self._give_back(other) or freed
        return freed

    def _neighbours(self, inst: EngineInst):
        return {id(o): o for g in inst.st.gpus for o in self.gpu_insts[g] if o is not inst}.values()

    def _starved_near(self, inst: EngineInst) -> list[EngineInst]:
        """The stalled engines on ``inst``'s GPUs that still have requests to run (one whose requests went has
        nothing to wait for: it would keep its neighbours from their headroom for good), in the order they
        stalled."""
        if not self.stalled:  # the common case, on every remap and completion: nothing to look through
            return []
        gpus = set(inst.st.gpus)
        return [o for o in self.stalled if o is not inst and o.waiting and gpus.intersection(o.st.gpus)]

    def _give_back(self, inst: EngineInst) -> bool:
        spare = inst.st.kv_blocks_mapped - inst.kv_used
        if spare <= 0:
            return False
        inst.st.kv_blocks_mapped -= spare
        for g in inst.st.gpus:
            self.gpu_used[g] -= spare * inst.block_bytes
        return True
