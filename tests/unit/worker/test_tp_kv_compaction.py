"""A tensor-parallel instance gives back the pages its blocks in use are spread over once its KV target is lowered,
as a single-device one does (KVCache.compact): found in review, compaction asked for a KVPageMapper and a shard's
mapper is a BudgetMapper around one, so a tp instance kept those pages for good and the controller, which counts
them given back, over-committed its GPUs. Two in-process workers with real gloo groups, real shards and real
page pools of 8 MiB pages (four 2 MiB blocks of a tiny-llama shard to a page)."""

from __future__ import annotations

import contextlib

import pytest
from tp_groups import start_tp2

from warmserve import protocol as P
from warmserve.worker import InProcessWorker

pytestmark = pytest.mark.slow

MODEL = "tiny-llama"  # 4 heads, 2 KV heads: splits 2 ways
PAGE_MIB = 8
START_FREE_BLOCKS = 6
#: Max tokens of five requests admitted together: each holds one block (0-4, in order); the three short ones end
#: first and leave blocks 0 and 4 in use, on two pages, where one page holds both.
MAX_TOKENS = [24, 2, 2, 2, 24]


@contextlib.contextmanager
def tp2_paged(tiny_models):
    """Rank 0 and rank 1 of a running tp-2 instance of tiny-llama over 8 MiB pages, in-process workers."""
    workers = [InProcessWorker("cpu", memory_gib=0.125, prefault=False, worker_id=f"rank{r}", page_mib=PAGE_MIB)
               for r in range(2)]
    try:
        start_tp2(workers, tiny_models[MODEL], MODEL, kv_target_free_blocks=START_FREE_BLOCKS)
        yield workers
    finally:
        for w in workers:
            w.close()


def _kv(worker):
    """(blocks in use, pages the KV cache holds, pool pages free) of a rank, read while its follower thread (if
    any) is out of the engine."""
    inst = worker.core.instances[MODEL]
    lock = inst.tp.lock if inst.follower else contextlib.nullcontext()
    with lock:
        kv = inst.engine.kv
        return kv.num_used, kv.mapper.pages_mapped, worker.pool.free_pages


class Leader:
    """Rank 0's WorkerCore driven by hand: messages in, ticks, replies kept."""

    def __init__(self, worker):
        self.core = worker.core
        self.replies: list = []
        self.core.emit = lambda peer, msg: self.replies.append(msg)
        self._next_id = 0

    def send(self, msg_type, **fields) -> int:
        self._next_id += 1
        self.core.handle(b"test", msg_type(id=self._next_id, **fields))
        return self._next_id

    def tokens(self, rid: int) -> list[int]:
        return [t for m in self.replies if isinstance(m, P.Tokens) and m.id == rid for t in m.token_ids]

    def finished(self, rid: int) -> bool:
        return any(getattr(m, "id", None) == rid and (isinstance(m, P.Error) or m.finished)
                   for m in self.replies if isinstance(m, (P.Tokens, P.Error)))

    def generate_all(self) -> list[int]:
        return [self.send(P.Generate, model=MODEL, prompt_ids=[1 + i, 2, 3],
                          sampling=P.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
                for i, n in enumerate(MAX_TOKENS)]

    def tick_until(self, done, ticks: int = 200) -> None:
        for _ in range(ticks):
            if done():
                return
            self.core.tick()
        raise AssertionError(f"not done after {ticks} ticks: {self.replies[-3:]}")


def test_a_lowered_kv_target_gives_back_the_pages_blocks_in_use_are_spread_over(tiny_models):
    with tp2_paged(tiny_models) as ranks:
        lead = Leader(ranks[0])
        ref = lead.generate_all()  # the same batches without the lowered target: the tokens to expect
        lead.tick_until(lambda: all(lead.finished(r) for r in ref))

        rids = lead.generate_all()
        lead.tick_until(lambda: all(lead.finished(r) for r in rids[1:4]))
        assert not lead.finished(rids[0]) and not lead.finished(rids[4])
        before = [_kv(w) for w in ranks]
        assert [b[:2] for b in before] == [(2, 2), (2, 2)], before  # two blocks in use, one on each of 2 pages

        lead.send(P.SetKvTarget, model=MODEL, free_blocks=0)
        lead.core.tick()  # the target reaches the follower with this step's plan; each rank compacts after it
        after = [_kv(w) for w in ranks]
        assert [a[:2] for a in after] == [(2, 1), (2, 1)], after  # one page holds both blocks now
        assert [a[2] - b[2] for a, b in zip(after, before)] == [1, 1]  # the other page went back to each pool

        lead.tick_until(lambda: lead.finished(rids[0]) and lead.finished(rids[4]))
        assert not [m for m in lead.replies if isinstance(m, P.Error)]
        # The moved blocks' K and V came along on both ranks: the same tokens as without the move.
        assert [lead.tokens(r) for r in rids] == [lead.tokens(r) for r in ref]
        assert all(len(lead.tokens(r)) == n for r, n in zip(rids, MAX_TOKENS))
