"""Co-served instances on one worker's pool and the KV blocks they keep mapped ahead (engine.Engine.pool_starved),
through InProcessWorker: the real pool, engine and checkpoints. Found in review: a request waited forever while an
idle neighbour kept its free blocks mapped as headroom (the worker never steps an idle instance, it only grows its
headroom), and a request starved of pages must still wait without spinning the worker's loop."""

from __future__ import annotations

import pytest

from warmserve import errors
from warmserve import protocol as P
from warmserve.worker import InProcessWorker

pytestmark = pytest.mark.slow

GREEDY4 = P.SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)


def _free_blocks(worker, name: str) -> int:
    return next(i.kv.kv_blocks_free for i in worker.stats().instances if i.name == name)


def test_a_request_takes_the_free_blocks_an_idle_neighbour_keeps_mapped(tiny_models):
    with InProcessWorker("cpu", memory_gib=0.25) as worker:
        worker.prewarm(tiny_models["tiny-llama"])
        worker.prewarm(tiny_models["tiny-qwen2"])
        worker.activate("tiny-llama", kv_blocks=4, shared=True, kv_target_free_blocks=0)
        worker.activate("tiny-qwen2", kv_blocks=128, shared=True, kv_target_free_blocks=127)
        for _ in range(40):  # the neighbour maps its target while idle, until the pool has no page left
            worker.core.tick()
        assert worker.stats().pool.free_bytes == 0
        held = _free_blocks(worker, "tiny-qwen2")
        s = worker.generate("tiny-llama", [1, 2, 3], GREEDY4)
        for _ in range(20):  # the idle neighbour keeps growing toward its target between the steps
            worker.core.tick()
            if not worker.stats().in_flight:
                break
        assert not worker.stats().in_flight, "the request waits for pages its idle neighbour keeps as headroom"
        tokens = s.collect()[0]
        assert len(tokens) == 4 and _free_blocks(worker, "tiny-qwen2") < held
        for _ in range(40):  # its own headroom comes back once nobody on the pool waits
            worker.core.tick()
        assert worker.stats().pool.free_bytes == 0
        worker.set_kv_target("tiny-qwen2", 0)
        assert worker.generate("tiny-llama", [1, 2, 3], GREEDY4).collect()[0] == tokens


def test_a_request_starved_of_pages_a_prewarm_holds_waits_without_spinning_and_runs_once_they_come(tiny_models):
    """The pool holds exactly three prewarmed models' weights (14 + 10 + 19 pages): an instance activated there
    has no KV page, and no neighbour keeps any as headroom. Its request waits, and the worker does not call that
    busy; once a prewarm is evicted it runs."""
    with InProcessWorker("cpu", memory_gib=43 / 512) as worker:
        for name in ("tiny-llama", "tiny-qwen2", "tiny-deep"):
            worker.prewarm(tiny_models[name])
        assert worker.stats().pool.free_bytes == 0
        worker.activate("tiny-llama", kv_blocks=4, shared=True, kv_target_free_blocks=0)
        s = worker.generate("tiny-llama", [1, 2, 3], GREEDY4)
        for _ in range(5):
            worker.core.tick()
        assert worker.stats().in_flight == 1 and not worker.core.busy()
        worker.evict("tiny-deep")
        assert len(s.collect()[0]) == 4


def test_a_request_that_never_fits_beside_a_serving_neighbour_is_refused_and_the_queue_moves_on(tiny_models):
    """A pool of 30 pages: tiny-llama's weights take 14, tiny-qwen2's 10, so beside both at most 6 KV blocks are
    ever free, while tiny-llama's own cap (what the pool holds after its weights alone) is 16. A request of 8
    blocks used to be admitted on that cap and wait at the head of the queue for good, and every request after it;
    it is refused with the numbers now and the next one runs; a server-filled max_tokens is lowered to fit. With the
    neighbour stopped the long one is taken, and runs once its prewarmed weights are evicted."""
    with InProcessWorker("cpu", memory_gib=30 / 512) as worker:
        worker.prewarm(tiny_models["tiny-llama"])
        worker.prewarm(tiny_models["tiny-qwen2"])
        worker.activate("tiny-llama", kv_blocks=16, shared=True, kv_target_free_blocks=0)
        worker.activate("tiny-qwen2", kv_blocks=2, shared=True, kv_target_free_blocks=0)
        long = P.SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
        prompt = [1 + i % 1000 for i in range(7 * 256 + 100)]  # + 10 - 1 tokens: 8 blocks of 256
        with pytest.raises(errors.NoRoomHereError, match="beside the weights of tiny-qwen2") as err:
            worker.generate("tiny-llama", prompt, long).collect()
        assert (err.value.kv_blocks, err.value.blocks_needed) == (6, 8)
        ids, _ = worker.generate("tiny-llama", [1, 2, 3], GREEDY4).collect()
        assert len(ids) == 4
        # a max_tokens the server filled in (the context less the prompt) is lowered to what is ever free instead
        defaulted = P.SamplingParams(max_tokens=2048 - 1500, max_tokens_defaulted=True, temperature=0.0,
                                     ignore_eos=True)
        ids, last = worker.generate("tiny-llama", prompt[:1500], defaulted).collect()
        assert len(ids) == 6 * 256 + 1 - 1500 and last.finish_reason == "length"
        worker.deactivate("tiny-qwen2")  # its weights stay, prewarmed: the request is taken, and waits for them
        stream = worker.generate("tiny-llama", prompt, long)
        worker.evict("tiny-qwen2")
        ids, last = stream.collect()
        assert len(ids) == 10 and last.finish_reason == "length"


def test_a_waiting_request_a_neighbour_activated_later_leaves_no_room_for_is_answered_with_the_error(tiny_models):
    """A pool of 29 pages holding tiny-llama's weights (14) and tiny-qwen2's prewarm (10): an 8-block request
    fits tiny-llama's share of 15 and waits for the prewarm's pages, which the policy would evict. Then tiny-qwen2
    starts serving there instead, and beside both at most 5 blocks are ever free: the request used to wait for
    good, with every request behind it; the worker answers it with the engine's NoRoomHereError now."""
    with InProcessWorker("cpu", memory_gib=29 / 512) as worker:
        worker.prewarm(tiny_models["tiny-llama"])
        worker.prewarm(tiny_models["tiny-qwen2"])
        worker.activate("tiny-llama", kv_blocks=15, shared=True, kv_target_free_blocks=0)
        long = P.SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
        stream = worker.generate("tiny-llama", [1 + i % 1000 for i in range(7 * 256 + 100)], long)
        for _ in range(5):
            worker.core.tick()
        assert worker.stats().in_flight == 1  # waiting for the prewarm's pages
        worker.activate("tiny-qwen2", kv_blocks=2, shared=True, kv_target_free_blocks=0)
        with pytest.raises(errors.NoRoomHereError, match="since tiny-qwen2 started serving") as err:
            stream.collect()
        assert (err.value.kv_blocks, err.value.blocks_needed) == (5, 8)
        ids, _ = worker.generate("tiny-llama", [1, 2, 3], GREEDY4).collect()
        assert len(ids) == 4 and not worker.stats().in_flight
