"""A tensor-parallel rank whose pool runs short while the ranks grow their KV caches together: the pages it had
when the ranks agreed on a count are taken before it maps them (a prewarm's loader thread maps its pages beside
the instance), so it maps fewer blocks than the others. The ranks settle on the fewest any of them mapped, those
that mapped more give the surplus back, and the instance keeps serving with the smaller cache (found in review:
the ranks ended with RanksDivergedError, failing every request); once the pages are back, growth resumes to the
same size on every rank. Two in-process workers with real gloo groups, real shards and real page pools."""

from __future__ import annotations

import pytest

from warmserve import protocol as P

from test_tp_lockstep import tp2_workers

pytestmark = pytest.mark.slow

GREEDY = P.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
MODEL = "tiny-llama"  # 4 heads, 2 KV heads: splits 2 ways
START_FREE_BLOCKS = 2
TARGET_FREE_BLOCKS = 10
#: Pages the short rank's pool keeps once the "load" took the rest: fewer than the 8 blocks the ranks agree on.
LEFT_PAGES = 3


@pytest.fixture
def ranks(tiny_models):
    """Rank 0 and rank 1 of a running tp-2 instance of tiny-llama holding few KV blocks, in-process workers."""
    with tp2_workers(tiny_models, 20.0, kv_target_free_blocks=START_FREE_BLOCKS) as workers:
        yield workers


def _kv(worker):
    """(mapped blocks, free mapped blocks, pool pages free) of a rank, read while its follower thread (if any) is
    out of the engine."""
    inst = worker.core.instances[MODEL]
    lock = inst.tp.lock if inst.follower else None
    if lock is not None:
        lock.acquire()
    try:
        kv = inst.engine.kv
        return kv.num_mapped, kv.num_free_mapped, worker.pool.free_pages
    finally:
        if lock is not None:
            lock.release()


@pytest.mark.parametrize("short_rank", [0, 1])
def test_a_rank_short_of_pages_mid_growth_serves_on_with_the_fewest_blocks_and_grows_back(ranks, short_rank):
    lead, follow = ranks
    short = ranks[short_rank]
    full = ranks[1 - short_rank]
    assert _kv(lead)[:2] == _kv(follow)[:2] == (START_FREE_BLOCKS, START_FREE_BLOCKS)
    full_free_before = _kv(full)[2]
    # Another model's pages: mapped right after this rank counted the pages it could map, and before it maps them
    # (the window a prewarm's loader thread has on a worker).
    hog = short.pool.create_slot(short.pool.total_pages * short.pool.page_bytes, "hog")
    mapper = short.core.instances[MODEL].engine.kv.mapper
    counted = mapper.mappable
    lost = []

    def count_then_lose_pages(blocks):
        n = counted(blocks)
        if n > LEFT_PAGES and not lost:
            lost.append(short.pool.free_pages - LEFT_PAGES)
            hog.map(0, lost[0])
        return n

    mapper.mappable = count_then_lose_pages
    lead.set_kv_target(MODEL, TARGET_FREE_BLOCKS)  # passed on with the request's plan, which grows the caches
    got = lead.generate(MODEL, [1, 2, 3, 4], GREEDY).collect()[0]
    assert len(got) == GREEDY.max_tokens
    assert lost, "the short rank never lost its pages: the test did not test anything"
    fol_tp = follow.core.instances[MODEL].tp
    assert fol_tp.running and fol_tp.error is None
    # Every rank holds the blocks the short one could map; the one that mapped more gave its surplus back.
    mapped = START_FREE_BLOCKS + LEFT_PAGES
    assert _kv(lead)[:2] == _kv(follow)[:2] == (mapped, mapped)
    assert _kv(short)[2] == 0
    assert _kv(full)[2] == full_free_before - LEFT_PAGES

    hog.unmap(0, hog.mapped_pages)  # the other model is gone: growth resumes on the next plans
    assert lead.generate(MODEL, [1, 2, 3, 4], GREEDY).collect()[0] == got  # the same ranks, the same tokens
    assert _kv(lead)[:2] == _kv(follow)[:2] == (TARGET_FREE_BLOCKS, TARGET_FREE_BLOCKS)
    assert _kv(short)[2] == _kv(full)[2] == full_free_before - (TARGET_FREE_BLOCKS - START_FREE_BLOCKS)
