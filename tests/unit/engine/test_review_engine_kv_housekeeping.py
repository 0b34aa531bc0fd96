"""The KV housekeeping after a step, and the target's setter (found in review).

A step samples and reports its tokens before it gives free blocks back to the pool (shrink), compacts and maps
ahead (grow). A driver error there (a failed unmap) raised out of the step: its tokens were lost (a request that
finished in it never reported finished, another lost a token) and a worker failed every request of the instance.
It is housekeeping: logged, the tokens reported, the give-back retried by a later step. An unmap that fails part
way through a block (a device backend unmaps run by run) must not leave that block on the free list with a page
missing under it. And ``set_kv_target_free_blocks`` checks its argument as the constructor does."""

from __future__ import annotations

import contextlib
import logging
import math
import time

import pytest
import torch

from warmserve import _C
from warmserve import protocol as P
from warmserve.engine import Engine, ModelConfig, SamplingParams
from warmserve.engine.demo import DemoSpec, config_dict
from warmserve.engine.kv_cache import KVCache, KVPageMapper
from warmserve.errors import DriverError, InvalidArgumentError
from warmserve.memory import PagePool

MiB = 1 << 20


@pytest.fixture
def fail_unmap():
    """fail_unmap(k): the k-th unmap from now fails (k=1: the next one); disarmed after the test."""
    yield lambda k: _C._debug_fail_after("protect_hard", k)
    _C._debug_fail_after("protect_hard", 0)


def _prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


SHORT = SamplingParams(max_tokens=3, ignore_eos=True)
LONG = SamplingParams(max_tokens=40, ignore_eos=True)


def test_a_failed_unmap_after_a_step_keeps_its_tokens_and_the_engine_serves_on(lm, pool, fail_unmap, caplog):
    """A (one block, 3 tokens) and B (40 tokens) beside it, no headroom kept: the step in which A finishes frees
    its block, and the shrink after it fails to unmap it. The step still reports A's last token and its end, B
    loses nothing, a warning says why, the block stays a mapped free block until a later step gives it back, and
    closing the engine gives the pool every page back."""
    pa, pb = _prompt(250, 1), _prompt(300, 2)
    with Engine(lm) as ref:
        want = {"A": ref.generate([pa], SHORT)[0], "B": ref.generate([pb], LONG)[0]}
    free_before = pool.free_bytes
    got, fin = {"A": [], "B": []}, {}
    with Engine(lm, target_free_blocks=0) as eng:
        eng.add_request("A", pa, SHORT)
        eng.add_request("B", pb, LONG)
        armed_at = None
        while eng.has_unfinished():
            if armed_at is None and "A" in eng.seqs and len(eng.seqs["A"].output) == SHORT.max_tokens - 1:
                armed_at = eng.num_steps
                fail_unmap(1)
                with caplog.at_level(logging.WARNING, logger="warmserve.engine"):
                    outs = eng.step()
                fail_unmap(0)
                assert "A" in fin or any(o.request_id == "A" and o.finished for o in outs)
                assert (eng.kv.num_free_mapped, eng.kv.num_mapped) == (1, eng.kv.num_used + 1), "it stays mapped, free"
            else:
                outs = eng.step()
            for o in outs:
                got[o.request_id] += o.token_ids
                if o.finished:
                    fin[o.request_id] = o.finish_reason
        assert armed_at is not None
        assert any("unmap" in r.getMessage() or "EINVAL" in r.getMessage() for r in caplog.records
                   if r.levelno == logging.WARNING), [r.getMessage() for r in caplog.records]
        assert got == want and fin == {"A": "length", "B": "length"}
        # the later steps retried the give-back: nothing stays mapped beyond the target of 0
        assert (eng.kv.num_used, eng.kv.num_free_mapped, eng.kv.num_mapped) == (0, 0, 0)
        assert len(eng.generate([pa], SHORT)[0]) == 3, "the engine serves on"
    assert pool.free_bytes == free_before, "every KV page went back to the pool"


def test_a_worker_answers_every_request_when_an_unmap_after_a_step_fails(tiny_dir, fail_unmap):
    """The same through WorkerCore: before, both requests of the instance ended with an Error."""
    from warmserve.worker.core import WorkerCore

    with PagePool(64 * MiB, prefault=False) as pool:
        replies = []
        core = WorkerCore(pool, device="cpu", worker_id="w", emit=lambda peer, m: replies.append(m))
        try:
            def call(msg):
                core.handle("c", msg)
                for _ in range(20000):
                    got = [m for m in replies if getattr(m, "id", None) == msg.id
                           and not isinstance(m, (P.PrewarmProgress, P.Tokens))]
                    if got:
                        return got[-1]
                    if not core.tick():
                        time.sleep(0.001)
                raise AssertionError("no reply")

            assert not isinstance(call(P.Prewarm(id=1, path=tiny_dir["tiny-linear"], name="m")), P.Error)
            assert not isinstance(call(P.Activate(id=2, name="m", kv_target_free_blocks=0)), P.Error)
            core.handle("c", P.Generate(id=10, model="m", prompt_ids=_prompt(250, 1), sampling=SHORT))
            core.handle("c", P.Generate(id=11, model="m", prompt_ids=_prompt(300, 2), sampling=LONG))
            eng = core.instances["m"].engine
            armed = False
            for _ in range(500):
                if not armed and "0" in eng.seqs and len(eng.seqs["0"].output) == SHORT.max_tokens - 1:
                    armed = True
                    fail_unmap(1)
                core.tick()
                fail_unmap(0)
                if not core.generations:
                    break
            assert armed
            errors = [m for m in replies if isinstance(m, P.Error)]
            assert not errors, errors
            toks = {10: [], 11: []}
            fins = {}
            for m in replies:
                if isinstance(m, P.Tokens):
                    toks[m.id] += m.token_ids
                    if m.finished:
                        fins[m.id] = m.finish_reason
            assert (len(toks[10]), len(toks[11]), fins) == (3, 40, {10: "length", 11: "length"})
        finally:
            core.close()


class _TearingSlot:
    """A slot whose armed unmap of several pages unmaps the first and then fails, as a device backend that unmaps
    run by run does (Error::page_done): the host backend's own fault injection fails a whole unmap."""

    def __init__(self, slot):
        self.slot = slot
        self.armed = 0

    def __getattr__(self, name):
        return getattr(self.slot, name)

    def unmap(self, page: int, n: int) -> None:
        if self.armed and n > 1:
            self.armed -= 1
            self.slot.unmap(page, 1)
            raise DriverError("cuMemUnmap failed part way (test)")
        self.slot.unmap(page, n)


@pytest.mark.parametrize("retry", ["shrink", "map"])
def test_an_unmap_that_fails_part_way_through_a_block_keeps_no_torn_block_on_the_free_list(retry):
    """4 MiB blocks on 2 MiB pages: the shrink's unmap of a block frees its first page and fails. That block must
    not stay on the free list (the next sequence given it writes through the missing page: SIGSEGV, or a CUDA
    illegal address); the page still mapped is given back by a later shrink, or mapped afresh when the block is
    mapped again (before: a later shrink raised "double unmap" for good), and the pool gets every page back."""
    cfg = ModelConfig.from_dict(config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=512)))
    block = 4 * MiB
    with PagePool(64 * MiB, backend="host", page_bytes=2 * MiB, prefault=False) as pool:
        real = pool.create_slot(8 * block, "kv")
        slot = _TearingSlot(real)
        region = real.tensor(0, (8, block // 4), torch.float32, pinned=False)
        kv = KVCache(cfg, region, 8, 256, KVPageMapper(slot, 0, block), target_free_blocks=8)
        got = [kv.allocate() for _ in range(4)]
        kv.free(got)
        slot.armed = 1
        with contextlib.suppress(DriverError):
            kv.set_target_free_blocks(0)
        for b in kv._free:  # every block on the free list has all its pages
            pages = kv.mapper.pages_of(b)
            assert real.is_mapped(pages.start, len(pages)), f"block {b} is free with a page missing"
        for b in range(8):
            assert kv.mapped[b] == (b not in kv._unmapped)
        assert kv.num_mapped == kv.num_free_mapped + kv.num_used
        assert kv.num_free_mapped == 0 and real.mapped_pages == 1, "the torn block's second page stays, listed"
        if retry == "map":  # the torn block is mapped again over its page that stayed
            got = [kv.allocate() for _ in range(4)]
            assert sorted(got) == [0, 1, 2, 3]
            for b in got:
                region[b] = 1.0
            kv.free(got)
        kv.shrink()  # the torn block's page that stayed mapped goes too
        assert kv.num_mapped == 0 and real.mapped_pages == 0 and pool.free_pages == pool.total_pages
        got = [kv.allocate() for _ in range(8)]  # every block maps again, the torn one's pages included
        for b in got:
            region[b] = 2.0
        kv.free(got)
        kv.release_all()
        assert pool.free_pages == pool.total_pages
        del region


@pytest.mark.parametrize("bad", ["3", float("nan"), 1.5, True, -1, math.inf])
def test_set_kv_target_free_blocks_refuses_what_the_constructor_refuses(lm, bad):
    with pytest.raises(InvalidArgumentError):
        Engine(lm, target_free_blocks=bad)
    with Engine(lm, target_free_blocks=2) as eng:
        with pytest.raises(InvalidArgumentError) as err:
            eng.set_kv_target_free_blocks(bad)
        assert err.value.param == "target_free_blocks" and repr(bad) in str(err.value)
        assert eng.kv.target_free_blocks == 2, "a refused target leaves the old one"


def test_set_kv_target_free_blocks_none_means_every_block_as_in_the_constructor(lm):
    with Engine(lm, target_free_blocks=None) as eng:
        every = eng.kv.target_free_blocks
    with Engine(lm, target_free_blocks=0) as eng:
        st = eng.set_kv_target_free_blocks(None)
        assert st.kv_free_target == every == eng.kv.total_blocks
        assert eng.set_kv_target_free_blocks(3).kv_free_target == 3


def test_tidy_raises_for_a_tensor_parallel_shard_and_logs_otherwise(fail_unmap, caplog):
    """A shard's ranks must keep the same free blocks (a rank with one more schedules differently), so there the
    failure still ends the step (quiet=False), as the group's step-failure handling expects; alone it is logged."""
    cfg = ModelConfig.from_dict(config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=512)))
    with PagePool(32 * MiB, backend="host", page_bytes=2 * MiB, prefault=False) as pool:
        slot = pool.create_slot(8 * 2 * MiB, "kv")
        region = slot.tensor(0, (8, 2 * MiB // 4), torch.float32, pinned=False)
        kv = KVCache(cfg, region, 8, 256, KVPageMapper(slot, 0, 2 * MiB), target_free_blocks=4)
        kv.grow()
        kv.target_free_blocks = 2
        fail_unmap(1)
        with pytest.raises(DriverError):
            kv.tidy(give_back_all=False, quiet=False)
        assert (kv.num_free_mapped, kv.num_mapped) == (4, 4), "nothing went: the blocks stay mapped and free"
        fail_unmap(1)
        with caplog.at_level(logging.WARNING, logger="warmserve.engine"):
            assert kv.tidy(give_back_all=True) == {}
        assert any("retries" in r.getMessage() for r in caplog.records)
        assert kv.tidy(give_back_all=True) == {} and kv.num_mapped == 0 and pool.free_pages == pool.total_pages
        del region
