"""The paged KV cache: blocks of `block_tokens` tokens, each covering every layer's K and V contiguously.

A block is laid out [layers, 2 (K, V), block_tokens, kv_heads, head_dim] and padded to a whole number of 2 MiB
units (geometry.PAGE_BYTES; the demo models need no padding: their blocks are exact multiples). The cache spans
`total_blocks` in its slot's address range, but only mapped blocks have pages behind them: blocks are mapped
lazily on growth, and free blocks beyond `target_free_blocks` are unmapped, their pages going back to the pool
(PAPER.md §6, both directions).

The pool's page may be larger than the 2 MiB unit (on a GPU each page costs driver calls, so a 1 GiB give-back
takes 8.4 ms at 2 MiB pages and 0.48 ms at 32 MiB on an H200: bench/switch/README.md). Then several blocks share
a page, or a block spans two: `KVPageMapper` maps a page with the first block on it and unmaps it with the last.

Allocation takes the lowest free index first, so the mapped set stays compact and shrinking takes the highest
(first those whose pages no block in use holds, when blocks share pages).
"""

from __future__ import annotations

import heapq
import logging

import torch

from warmserve import geometry
from warmserve.engine.checks import check_counts
from warmserve.errors import InvalidArgumentError, OutOfMemoryError, WarmServeError
from warmserve.protocol import KvStats

log = logging.getLogger(__name__)


def block_layout(cfg, dtype: torch.dtype, block_tokens: int = geometry.KV_BLOCK_TOKENS,
                 page_bytes: int = geometry.PAGE_BYTES):
    """(bytes of K+V for one block, bytes it occupies: whole pages, and a whole number of cache rows)."""
    esize = torch.empty((), dtype=dtype).element_size()
    per_token = geometry.kv_bytes_per_token(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, esize)
    row = cfg.num_kv_heads * cfg.head_dim * esize
    padded = geometry.kv_block_bytes(per_token, block_tokens=block_tokens, page_bytes=page_bytes, row_bytes=row)
    return block_tokens * per_token, padded


class KVPageMapper:
    """Maps and unmaps the slot pages under KV blocks: block ``b`` is bytes ``[offset_bytes + b * block_bytes,
    + block_bytes)`` of the slot, and a page stays mapped while any mapped block lies on it (counted per page)."""

    def __init__(self, slot, offset_bytes: int, block_bytes: int):
        if offset_bytes % slot.page_bytes or block_bytes <= 0:
            raise InvalidArgumentError(f"KV blocks of {block_bytes} bytes at {offset_bytes}: the region must start on "
                                       f"a page ({slot.page_bytes} bytes)", offset_bytes=offset_bytes)
        self.slot = slot
        self.offset_bytes = offset_bytes
        self.block_bytes = block_bytes
        self._blocks_on: dict[int, int] = {}  # slot page -> mapped blocks lying on it
        # Slot pages still mapped that no block holds: an unmap failed part way through a block (a device backend
        # unmaps run by run). Given back at the next shrink (release_stranded), or first by a map over them.
        self._stranded: set[int] = set()

    @property
    def pages_mapped(self) -> int:
        """Slot pages the mapped blocks hold."""
        return len(self._blocks_on)

    @property
    def blocks_per_page(self) -> int:
        """Blocks to a page where several share each and none lies across two (compaction moves those); else 0."""
        page = self.slot.page_bytes
        return page // self.block_bytes if page > self.block_bytes and page % self.block_bytes == 0 else 0

    def mapped_pages(self) -> list[int]:
        """The slot pages mapped blocks hold."""
        return list(self._blocks_on)

    def pages_of(self, b: int) -> range:
        """The slot pages block ``b`` lies on."""
        start = self.offset_bytes + b * self.block_bytes
        return range(start // self.slot.page_bytes, (start + self.block_bytes - 1) // self.slot.page_bytes + 1)

    def map_block(self, b: int) -> None:
        """Map the pages of block ``b`` that no other mapped block holds (OutOfMemoryError, with nothing mapped,
        when the pool has too few free pages)."""
        pages = self.pages_of(b)
        self._unmap_pages([p for p in pages if p in self._stranded])
        # Only a block's first and last page can be shared with a neighbour, so its new pages are one run.
        new = [p for p in pages if p not in self._blocks_on]
        if new:
            self.slot.map(new[0], len(new))
        for p in pages:
            self._blocks_on[p] = self._blocks_on.get(p, 0) + 1

    def unmap_block(self, b: int) -> None:
        """Unmap the pages of block ``b`` that no other mapped block lies on (they go back to the pool). Raises
        where none of them went: the block stays whole and mapped. Where some went, the block counts as unmapped
        and the pages that stayed are given back later (logged): found in review, the block stayed a free block
        with a page missing, which the next sequence would be given and write through."""
        pages = self.pages_of(b)
        gone = [p for p in pages if self._blocks_on[p] == 1]
        if gone:
            try:
                self.slot.unmap(gone[0], len(gone))
            except WarmServeError as e:
                left = [p for p in gone if self.slot.is_mapped(p)]
                if len(left) == len(gone):
                    raise
                self._stranded.update(left)
                log.warning("the unmap of KV block %d failed part way: %d of its %d page(s) stay mapped until the "
                            "next shrink gives them back: %s", b, len(left), len(gone), e)
        for p in pages:
            if self._blocks_on[p] == 1:
                del self._blocks_on[p]
            else:
                self._blocks_on[p] -= 1

    def release_stranded(self) -> None:
        """Give back the pages a part-way unmap left mapped (raises where an unmap fails again: they stay listed)."""
        self._unmap_pages(sorted(self._stranded))

    def _unmap_pages(self, pages: list[int]) -> None:
        """Unmap these stranded pages (ascending), run by run."""
        while pages:
            n = next((i for i in range(1, len(pages)) if pages[i] != pages[0] + i), len(pages))
            run, pages = range(pages[0], pages[0] + n), pages[n:]
            try:
                self.slot.unmap(run.start, n)
            except WarmServeError:
                self._stranded -= {p for p in run if not self.slot.is_mapped(p)}
                raise
            self._stranded -= set(run)

    def new_pages(self, b: int) -> int:
        """Pool pages mapping block ``b`` would take: its pages that no mapped block holds yet."""
        return sum(1 for p in self.pages_of(b) if p not in self._blocks_on)

    def mappable(self, blocks) -> int:
        """How many of ``blocks``, mapped in this order, the pool's free pages take: a page the mapped blocks hold,
        or that an earlier one of ``blocks`` takes, costs nothing again (the same answer on every tensor-parallel
        rank with the same state)."""
        free_pages = int(self.slot.pool.free_bytes) // self.slot.page_bytes
        taken: set[int] = set()
        n = 0
        for b in blocks:
            new = [p for p in self.pages_of(b) if p not in self._blocks_on and p not in taken]
            if len(taken) + len(new) > free_pages:
                break
            taken.update(new)
            n += 1
        return n

    def frees_pages(self, b: int, free: set[int]) -> bool:
        """Whether unmapping block ``b`` with the other blocks of ``free`` (mapped blocks nobody uses) gives pages
        back: some page of ``b`` holds no mapped block outside ``free``."""
        return any(self._blocks_on[p] == sum(1 for x in self.blocks_at(p) if x in free) for p in self.pages_of(b))

    def blocks_at(self, page: int) -> range:
        """The blocks that lie on slot page ``page`` (mapped or not)."""
        start = page * self.slot.page_bytes - self.offset_bytes
        end = start + self.slot.page_bytes
        return range(max(0, start // self.block_bytes), max(0, -(-end // self.block_bytes)))


def layer_offsets(num_layers: int, block_tokens: int) -> list[tuple[int, int]]:
    """(K, V) row offset of each layer inside a block (the layout above; engine/attention.py)."""
    return [((2 * i) * block_tokens, (2 * i + 1) * block_tokens) for i in range(num_layers)]


class KVCache:
    """Block bookkeeping plus the row view of the cache. `mapper` maps/unmaps one block's pages (None: all resident)."""

    def __init__(self, cfg, region: torch.Tensor, total_blocks: int, block_tokens: int, mapper=None,
                 target_free_blocks: int | None = None, map_blocks_per_step: int = 16):
        """region: [total_blocks, elements per block (padded)], contiguous; only mapped blocks are ever touched."""
        self.block_tokens = block_tokens
        self.total_blocks = total_blocks
        self.mapper = mapper
        row = cfg.num_kv_heads * cfg.head_dim
        if region.shape[0] != total_blocks or region.shape[1] % row:
            raise InvalidArgumentError(f"KV region shape {tuple(region.shape)} does not hold {total_blocks} blocks "
                                       f"of whole {row}-element rows")
        #: [total_blocks * rows_per_block, kv_heads * head_dim]: the cache as rows (see attention.py).
        self.rows = region.view(-1, row)
        self.rows_per_block = region.shape[1] // row
        #: (K, V) row offset of each layer inside a block.
        self.layer_offsets = layer_offsets(cfg.num_layers, block_tokens)
        self.mapped = [mapper is None] * total_blocks
        self._free: list[int] = list(range(total_blocks)) if mapper is None else []  # mapped and free (min-heap)
        self._unmapped: list[int] = [] if mapper is None else list(range(total_blocks))  # min-heap
        self.num_used = 0
        self.target_free_blocks = total_blocks if target_free_blocks is None else target_free_blocks
        self.map_blocks_per_step = map_blocks_per_step
        self._compact_idle = None  # the state in which compact() last found nothing to move

    # ---- counts --------------------------------------------------------------------------------------------------
    @property
    def num_mapped(self) -> int:
        return self.total_blocks - len(self._unmapped)

    @property
    def num_free_mapped(self) -> int:
        return len(self._free)

    # ---- allocation ----------------------------------------------------------------------------------------------
    def allocate(self) -> int | None:
        """A free block (mapping a new one if needed), or None when neither a free block nor a free page exists."""
        if self._free:
            b = heapq.heappop(self._free)
        else:
            b = self._map_one()
            if b is None:
                return None
        self.num_used += 1
        return b

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            heapq.heappush(self._free, b)
        self.num_used -= len(blocks)

    def next_unmapped(self, n: int) -> list[int]:
        """The ``n`` blocks mapping would take next (the lowest unmapped first)."""
        return heapq.nsmallest(n, self._unmapped)

    def _map_one(self) -> int | None:
        if not self._unmapped or self.mapper is None:
            return None
        b = self._unmapped[0]
        try:
            self.mapper.map_block(b)
        except OutOfMemoryError:
            return None
        heapq.heappop(self._unmapped)
        self.mapped[b] = True
        return b

    def compact(self, max_moves: int) -> dict[int, int]:
        """Empty the mapped pages that hold the fewest mapped blocks into unmapped room on pages that stay, while
        more pages are mapped than the blocks in use and the free ones kept (up to the target) need; only where
        whole blocks share pages (KVPageMapper.blocks_per_page), at most ``max_moves`` blocks in use a call. A block
        in use is copied (K and V) to its new place; a free one is mapped there instead, with nothing to copy. The
        emptied pages go back to the pool now. Returns {old block: new block} of the blocks in use: the sequence
        holding each must take the new id. Blocks are handed out lowest first, so sequences decoding side by side
        interleave theirs, and one long sequence could otherwise keep a page for each of its blocks. Once the copy
        has landed it does not raise: a source whose unmap fails stays a mapped free block (logged)."""
        m = self.mapper
        # Asked of the mapper, not its type: a tensor-parallel shard's wraps a KVPageMapper (worker/tp.py,
        # BudgetMapper), and its cache must give pages back as one on a single device does.
        k = getattr(m, "blocks_per_page", 0)
        kept = self.num_used + min(len(self._free), self.target_free_blocks)
        excess = m.pages_mapped - -(-kept // k) if k else 0
        if excess <= 0 or max_moves <= 0:
            return {}
        # A layout that had nothing to move is not searched again each step.
        state = (tuple(sorted(m.mapped_pages())), self.num_used, len(self._free), self.target_free_blocks)
        if state == self._compact_idle:
            return {}
        free = set(self._free)
        used, spare, room = {}, {}, {}
        for p in m.mapped_pages():
            blocks = [b for b in m.blocks_at(p) if b < self.total_blocks]
            used[p] = [b for b in blocks if self.mapped[b] and b not in free]
            spare[p] = [b for b in blocks if b in free]
            room[p] = [b for b in blocks if not self.mapped[b]]
        order = sorted(used, key=lambda p: (len(used[p]) + len(spare[p]), len(used[p]), -p))  # the emptiest first
        moves: dict[int, int] = {}  # blocks in use: copied
        remaps: dict[int, int] = {}  # free blocks: mapped elsewhere
        sources: set[int] = set()
        taken: set[int] = set()
        for p in order:
            if excess <= 0 or len(moves) + len(used[p]) > max_moves:
                break
            dst = [b for q in reversed(order) if q != p and q not in sources for b in room[q] if b not in taken]
            movers = used[p] + spare[p]
            if len(dst) < len(movers):
                break
            moves.update(zip(used[p], dst))
            remaps.update(zip(spare[p], dst[len(used[p]):]))
            taken.update(dst[:len(movers)])
            sources.add(p)
            excess -= 1
        if not sources:
            self._compact_idle = state
            return {}
        # The lists follow each map, copy and unmap as it lands, so a failure part way leaves every block on the
        # list its pages say (a block on _free with no pages under it is a SIGSEGV for the next sequence).
        done: list[int] = []
        try:
            for b in taken:
                m.map_block(b)  # its page is mapped: no pool page is taken
                self.mapped[b] = True
                done.append(b)
        finally:
            now = set(done)
            self._unmapped = [b for b in self._unmapped if b not in now]
            self._free += done  # free until the copy below lands in them
            heapq.heapify(self._unmapped)
            heapq.heapify(self._free)
        if moves:
            view = self.rows.view(self.total_blocks, -1)
            dev = self.rows.device
            view[torch.tensor(list(moves.values()), device=dev)] = view[torch.tensor(list(moves), device=dev)]
        # From here the caller's sequences take the new ids, so compaction cannot fail any more: a source that
        # will not unmap stays a mapped free block (a later shrink gives it back, or reports the error).
        dsts = set(moves.values())
        self._free = [b for b in self._free if b not in dsts] + list(moves)
        gone: list[int] = []
        try:
            for b in list(moves) + list(remaps):  # after the copy: the device reads them before an unmap, which
                m.unmap_block(b)  # waits for it (Backend.drain)
                self.mapped[b] = False
                gone.append(b)
        except WarmServeError as e:
            log.warning("KV compaction kept %d block(s) mapped that failed to unmap: %s",
                        len(moves) + len(remaps) - len(gone), e)
        finally:
            self._forget_unmapped(gone)
        return moves

    # ---- target --------------------------------------------------------------------------------------------------
    def set_target_free_blocks(self, n: int | None) -> None:
        """Checked as Engine's target_free_blocks is (found in review: 1.5 and True became 1, None, "3" and nan
        raised bare errors); None: every block, as there."""
        check_counts(frozenset({"target_free_blocks"}), target_free_blocks=(n, 0))
        self.target_free_blocks = self.total_blocks if n is None else min(n, self.total_blocks)
        self.shrink()

    def tidy(self, give_back_all: bool, quiet: bool = True) -> dict[int, int]:
        """After a step, whose tokens exist already: unmap the free blocks beyond the target (all of them with
        ``give_back_all``, and then none are mapped ahead), compact, map ahead up to the target. A driver error
        here is logged, and the next step's call retries (found in review: a failed unmap raised out of the step,
        its sampled tokens were never reported, and a worker failed every request of the instance). Not ``quiet``
        (a tensor-parallel shard) it raises: a rank left with a free block the others unmapped would schedule
        differently from them, so its failure ends the step as before. Returns compact's {old block: new block}
        of the blocks in use (empty where it failed: it raises before a copy)."""
        moved: dict[int, int] = {}
        try:
            self.shrink(0 if give_back_all else None)  # first: what goes leaves room that compaction fills
            moved = self.compact(self.map_blocks_per_step)
            if not give_back_all:
                self.grow()
        except WarmServeError as e:
            if not quiet:
                raise
            log.warning("KV housekeeping after a step failed (%d blocks mapped, %d free, target %d); the next step "
                        "retries: %s", self.num_mapped, len(self._free), self.target_free_blocks, e)
        return moved

    def shrink(self, target: int | None = None) -> int:
        """Unmap free blocks beyond the target (``target``: this one instead), highest index first (after those
        that give pages back); first the pages a part-way unmap left (KVPageMapper). Returns blocks unmapped."""
        if self.mapper is None:
            return 0
        self.mapper.release_stranded()
        extra = len(self._free) - (self.target_free_blocks if target is None else target)
        if extra <= 0:
            return 0
        # Blocks on pages that no block in use holds go first, so pages shared by several blocks go back whole
        # (with blocks of a page each, every free block qualifies and this is highest index first).
        free = set(self._free)
        order = sorted(self._free, key=lambda b: (self.mapper.frees_pages(b, free), b))
        return self._unmap_free(order[-extra:])

    def unmap_free(self, blocks: list[int]) -> None:
        """Unmap these free mapped blocks now, whatever the target (pages back to the pool): a tensor-parallel
        rank that mapped more than the others could gives its surplus back, so every rank holds the same blocks."""
        drop = set(blocks)
        bad = sorted(drop - set(self._free)) if self.mapper is not None else sorted(drop)
        if bad:
            raise InvalidArgumentError(f"{len(bad)} KV blocks (first {bad[:5]}) are not free mapped blocks of a paged "
                                       "cache: only those can be unmapped (free them first)", blocks=bad[:16])
        self._unmap_free(list(drop))

    def _unmap_free(self, blocks: list[int]) -> int:
        """Unmap free mapped blocks, moving each from _free to _unmapped as its unmap succeeds: one that fails
        part way leaves the rest mapped and free (never an unmapped block on _free, which the next sequence would
        be given and write through: SIGSEGV). Returns blocks unmapped."""
        gone: list[int] = []
        try:
            for b in blocks:
                self.mapper.unmap_block(b)
                self.mapped[b] = False
                gone.append(b)
        finally:
            self._forget_unmapped(gone)
        return len(gone)

    def _forget_unmapped(self, gone: list[int]) -> None:
        """Move blocks just unmapped from _free to _unmapped."""
        drop = set(gone)
        self._free = [b for b in self._free if b not in drop]
        self._unmapped += gone
        heapq.heapify(self._free)
        heapq.heapify(self._unmapped)

    def grow(self, max_blocks: int | None = None) -> int:
        """Map free blocks up to the target, at most max_blocks (default map_blocks_per_step) per call: mapping
        is throttled so it does not stall a step. Stops quietly when the pool has no free page."""
        limit = self.map_blocks_per_step if max_blocks is None else max_blocks
        n = 0
        while n < limit and len(self._free) < self.target_free_blocks:
            b = self._map_one()
            if b is None:
                break
            heapq.heappush(self._free, b)
            n += 1
        return n

    def extend(self, region: torch.Tensor, total_blocks: int) -> None:
        """Raise the cap to ``total_blocks`` over ``region``: a longer view of the same reserved range (the same
        base address, so blocks in use and the CUDA graphs' baked addresses stay valid). The new blocks start
        unmapped; they are mapped as the target and the load ask. Lowering the cap is not supported."""
        if total_blocks < self.total_blocks or region.shape[0] != total_blocks:
            raise InvalidArgumentError(
                f"a KV cap of {self.total_blocks} blocks can only grow, over a region of exactly that many rows "
                f"(asked {total_blocks}, region of {region.shape[0]})", total_blocks=total_blocks)
        rows = region.view(-1, self.rows.shape[1])
        if rows.data_ptr() != self.rows.data_ptr():
            raise InvalidArgumentError("the grown KV region must start where the cache does (same reserved range)")
        added = range(self.total_blocks, total_blocks)
        self.rows = rows
        self.mapped.extend(self.mapper is None for _ in added)
        if self.mapper is None:
            for b in added:
                heapq.heappush(self._free, b)
        else:
            for b in added:
                heapq.heappush(self._unmapped, b)
        self.total_blocks = total_blocks

    def release_all(self) -> None:
        """Unmap every mapped block (the cache must be empty)."""
        if self.num_used:
            raise InvalidArgumentError(f"{self.num_used} KV blocks still in use", used_blocks=self.num_used)
        if self.mapper is None:
            self._free = []
            return
        self._unmap_free([b for b in range(self.total_blocks) if self.mapped[b]])
        self.mapper.release_stranded()

    def stats(self, num_preemptions: int = 0, blocks_wanted: int = 0) -> KvStats:
        return KvStats(
            kv_blocks_total=self.total_blocks, kv_blocks_used=self.num_used, kv_blocks_mapped=self.num_mapped,
            kv_blocks_free=len(self._free), kv_free_target=self.target_free_blocks, block_tokens=self.block_tokens,
            num_preemptions=num_preemptions, kv_blocks_wanted=blocks_wanted,
        )
