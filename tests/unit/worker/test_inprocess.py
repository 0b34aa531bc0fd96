"""The worker's logic through InProcessWorker: the real pool, the real engine and real checkpoints, no sockets."""

from __future__ import annotations

import collections

import pytest

from warmserve import errors
from warmserve import protocol as P
from warmserve.worker import InProcessWorker, ModelStateError

pytestmark = pytest.mark.slow

GREEDY8 = P.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


def pages_of(stats: P.Stats, name: str) -> list[int]:
    return next(m.physical_pages for m in stats.models if m.name == name)


def test_prewarm_reports_progress_then_the_model_is_prewarmed(worker, tiny_models):
    events = []
    done = worker.prewarm(tiny_models["tiny-llama"], on_progress=events.append)
    assert done.name == "tiny-llama" and done.weight_bytes > 0
    assert done.pages == -(-done.weight_bytes // (2 << 20))
    assert events and all(isinstance(e, P.PrewarmProgress) for e in events)
    assert [e.loaded_bytes for e in events] == sorted(e.loaded_bytes for e in events)
    st = worker.stats()
    (m,) = st.models
    assert (m.name, m.state, m.weight_bytes, m.pages) == ("tiny-llama", "prewarmed", done.weight_bytes, done.pages)
    assert st.instances == [] and st.in_flight == 0


def test_activation_is_zero_copy_and_switching_keeps_every_page(worker, tiny_models):
    for name in ("tiny-llama", "tiny-qwen2"):
        worker.prewarm(tiny_models[name])
    before = worker.stats(pages=True)
    loaded_before = before.pool.bytes_loaded

    a = worker.activate("tiny-llama")
    assert a.copied_bytes == 0 and a.kv_blocks > 0
    ids_a, last = worker.generate("tiny-llama", [1, 2, 3, 4], GREEDY8).collect()
    assert len(ids_a) == 8 and last.finish_reason == "length" and last.num_output_tokens == 8
    worker.deactivate("tiny-llama")

    b = worker.activate("tiny-qwen2")
    assert b.copied_bytes == 0
    ids_b, _ = worker.generate("tiny-qwen2", [1, 2, 3, 4], GREEDY8).collect()
    assert len(ids_b) == 8

    after = worker.stats(pages=True)
    assert after.pool.bytes_loaded == loaded_before
    for name in ("tiny-llama", "tiny-qwen2"):
        assert pages_of(after, name) == pages_of(before, name) and pages_of(after, name)
    assert [i.name for i in after.instances] == ["tiny-qwen2"]
    # Greedy is deterministic across a deactivate/activate cycle of the same weights.
    worker.deactivate("tiny-qwen2")
    worker.activate("tiny-llama")
    assert worker.generate("tiny-llama", [1, 2, 3, 4], GREEDY8).collect()[0] == ids_a


def test_evict_frees_the_pages_at_once(worker, tiny_models):
    free0 = worker.stats().pool.free_bytes
    done = worker.prewarm(tiny_models["tiny-deep"])
    assert worker.stats().pool.free_bytes <= free0 - done.weight_bytes
    ev = worker.evict("tiny-deep")
    assert ev.freed_bytes >= done.weight_bytes
    assert worker.stats().pool.free_bytes == free0
    with pytest.raises(errors.UnknownModelError):
        worker.activate("tiny-deep")


def test_caller_mistakes_are_typed_errors_and_the_worker_keeps_serving(worker, tiny_models):
    worker.prewarm(tiny_models["tiny-qwen2"])
    with pytest.raises(errors.UnknownModelError) as ei:
        worker.generate("nope", [1]).collect()
    assert ei.value.model == "nope" and ei.value.models == ["tiny-qwen2"]
    with pytest.raises(ModelStateError, match="activate it first"):
        worker.generate("tiny-qwen2", [1]).collect()
    with pytest.raises(ModelStateError):
        worker.prewarm(tiny_models["tiny-qwen2"])
    with pytest.raises(errors.InvalidArgumentError, match="no checkpoint"):
        worker.prewarm("/nonexistent/model")
    worker.activate("tiny-qwen2")
    with pytest.raises(errors.PromptTooLongError) as ei:
        worker.generate("tiny-qwen2", [5] * 600).collect()
    assert (ei.value.prompt_tokens, ei.value.max_tokens, ei.value.max_context) == (600, 16, 512)
    with pytest.raises(errors.InvalidArgumentError, match="vocabulary"):
        worker.generate("tiny-qwen2", [1, 10**6]).collect()
    with pytest.raises(errors.InvalidArgumentError, match="top_p"):
        worker.generate("tiny-qwen2", [1], P.SamplingParams(top_p=0.0)).collect()
    with pytest.raises(errors.InvalidArgumentError, match="empty"):
        worker.generate("tiny-qwen2", []).collect()
    with pytest.raises(ModelStateError, match="deactivate it before evicting"):
        worker.evict("tiny-qwen2")
    worker.prewarm(tiny_models["tiny-llama"])
    with pytest.raises(ModelStateError, match="already runs"):
        worker.activate("tiny-llama")
    ids, last = worker.generate("tiny-qwen2", [1, 2], GREEDY8).collect()
    assert len(ids) == 8 and last.finished


def test_prewarm_that_does_not_fit_says_by_how_much(tiny_models):
    with InProcessWorker("cpu", memory_gib=0.06) as w:  # 30 pages: one tiny-deep (18 pages), not two
        w.prewarm(tiny_models["tiny-deep"], name="first")
        with pytest.raises(errors.OutOfMemoryError) as ei:
            w.prewarm(tiny_models["tiny-deep"], name="second")
        e = ei.value
        assert e.asked_bytes > e.free_bytes and e.total_bytes == w.stats().pool.total_bytes
        assert "evict" in str(e)
        assert [m.name for m in w.stats().models] == ["first"]


def test_abort_and_deactivate_end_streams_with_abort(worker, tiny_models):
    worker.prewarm(tiny_models["tiny-llama"])
    worker.activate("tiny-llama")
    long = P.SamplingParams(max_tokens=200, ignore_eos=True)
    s1 = worker.generate("tiny-llama", [1, 2, 3], long)
    s2 = worker.generate("tiny-llama", [4, 5, 6], long)
    first = next(iter(s1))
    assert first.token_ids and not first.finished
    s1.abort()
    rest = list(s1)
    assert rest[-1].finish_reason == "abort"
    worker.abort(12345)  # unknown ids are fine: aborting is idempotent
    assert worker.stats().in_flight == 1
    d = worker.deactivate("tiny-llama")
    assert d.aborted == 1
    assert list(s2)[-1].finish_reason == "abort"
    assert worker.stats().in_flight == 0


def test_a_request_aborted_while_it_waits_in_its_engines_queue_never_runs(worker, tiny_models):
    """An engine that runs one sequence queues the second; aborted there, it ends with "abort" and no token, and
    the first runs on to its end (the controller now keeps such requests in its own queue: this is the path of a
    request that waits in the engine for KV room)."""
    worker.prewarm(tiny_models["tiny-llama"])
    worker.activate("tiny-llama", engine=P.EngineConfig(max_num_seqs=1))
    long = P.SamplingParams(max_tokens=400, ignore_eos=True)  # runs far longer than the checks below
    s1 = worker.generate("tiny-llama", [1, 2, 3], long)
    s2 = worker.generate("tiny-llama", [4, 5, 6], long)
    first = next(iter(s1))
    assert first.token_ids
    running = worker.stats().instances[0]
    assert (running.in_flight, running.running) == (2, 1)  # s2 waits behind max_num_seqs
    s2.abort()
    events = list(s2)
    assert events[-1].finish_reason == "abort" and not any(e.token_ids for e in events)
    assert len(first.token_ids) + sum(len(e.token_ids) for e in s1) == 400 and worker.stats().in_flight == 0


def test_shared_instances_interleave_with_fixed_kv_shares(worker, tiny_models):
    for name in ("tiny-llama", "tiny-qwen2"):
        worker.prewarm(tiny_models[name])
    with pytest.raises(errors.InvalidArgumentError, match="kv_blocks"):
        worker.activate("tiny-llama", shared=True)
    assert worker.activate("tiny-llama", kv_blocks=2, shared=True).kv_blocks == 2
    assert worker.activate("tiny-qwen2", kv_blocks=3, shared=True).kv_blocks == 3
    sp = P.SamplingParams(max_tokens=12, ignore_eos=True)
    a = iter(worker.generate("tiny-llama", [1, 2], sp))
    b = iter(worker.generate("tiny-qwen2", [3, 4], sp))
    got = {"a": [], "b": []}
    for ev_a, ev_b in zip(a, b):  # both streams advance step by step
        got["a"] += ev_a.token_ids
        got["b"] += ev_b.token_ids
    got["a"] += [t for ev in a for t in ev.token_ids]
    got["b"] += [t for ev in b for t in ev.token_ids]
    assert len(got["a"]) == len(got["b"]) == 12
    st = worker.stats()
    assert sorted(i.name for i in st.instances) == ["tiny-llama", "tiny-qwen2"]
    assert all(i.shared for i in st.instances)


def test_a_shared_instance_left_alone_becomes_dedicated_with_its_requests_running(worker, tiny_models):
    """Dedicate (a co-served host converting in place): refused while another instance runs beside it; once
    alone, the running request goes on untouched, the KV cap rises from the share to all the slot holds (a
    request the share could not hold is now accepted), and no other instance may join any more."""
    for name in ("tiny-llama", "tiny-qwen2"):
        worker.prewarm(tiny_models[name])
    worker.activate("tiny-llama", kv_blocks=1, shared=True)
    worker.activate("tiny-qwen2", kv_blocks=1, shared=True)
    with pytest.raises(ModelStateError, match="alone"):
        worker.dedicate("tiny-llama")
    worker.deactivate("tiny-qwen2")
    sp = P.SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    stream = iter(worker.generate("tiny-llama", [1, 2, 3], sp))
    n = len(next(stream).token_ids)
    long = P.SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)  # 300 tokens: 2 blocks of 256
    with pytest.raises(errors.NoRoomHereError, match="KV blocks"):  # its share: an instance alone holds it
        worker.generate("tiny-llama", list(range(1, 201)), long).collect()
    got = worker.dedicate("tiny-llama")
    assert got.kv.kv_blocks_total > 1 and got.kv.kv_blocks_used >= 1
    n += sum(len(ev.token_ids) for ev in stream)
    assert n == 40
    ids, last = worker.generate("tiny-llama", list(range(1, 201)), long).collect()
    assert len(ids) == 100 and last.finish_reason == "length"
    (inst,) = worker.stats().instances
    assert not inst.shared and inst.kv.kv_blocks_total == got.kv.kv_blocks_total
    with pytest.raises(ModelStateError, match="already runs"):
        worker.activate("tiny-qwen2", kv_blocks=1, shared=True)
    with pytest.raises(ModelStateError, match="dedicated already"):
        worker.dedicate("tiny-llama")


def test_kv_target_hands_pages_back_and_takes_them_again(worker, tiny_models):
    worker.prewarm(tiny_models["tiny-llama"])
    worker.activate("tiny-llama", kv_blocks=16)
    stream = iter(worker.generate("tiny-llama", [1, 2, 3], P.SamplingParams(max_tokens=20, ignore_eos=True)))
    n = len(next(stream).token_ids)
    worker.set_kv_target("tiny-llama", 8)
    n += len(next(stream).token_ids)
    free_mid = worker.stats().pool.free_bytes
    shrunk = worker.set_kv_target("tiny-llama", 0)
    assert shrunk.kv.kv_blocks_free == 0
    free_low = worker.stats().pool.free_bytes
    assert free_low > free_mid  # free KV blocks went back to the pool while the request runs
    worker.set_kv_target("tiny-llama", 4)
    for ev in stream:  # the engine maps blocks back while it steps
        n += len(ev.token_ids)
    assert n == 20
    st = worker.stats()
    assert st.instances[0].kv.kv_blocks_free >= 4
    assert st.pool.free_bytes < free_low


def test_a_dedicated_instance_keeps_the_engine_configurations_kv_cap(worker, tiny_models):
    """Found in review: turning a shared instance into a dedicated one raised its KV cap to the whole slot, past
    the max_kv_blocks of the engine configuration it was activated under. Also: a negative KV target is refused
    at activation, as SetKvTarget refuses it."""
    worker.prewarm(tiny_models["tiny-llama"])
    with pytest.raises(errors.InvalidArgumentError, match="kv_target_free_blocks"):
        worker.activate("tiny-llama", kv_blocks=4, shared=True, kv_target_free_blocks=-3)
    worker.activate("tiny-llama", kv_blocks=4, shared=True, engine=P.EngineConfig(max_kv_blocks=8))
    assert worker.dedicate("tiny-llama").kv.kv_blocks_total == 8


def test_a_shared_activation_keeps_the_engine_configurations_kv_cap(worker, tiny_models):
    """Found in review: a co-served instance's share replaced max_kv_blocks (--max-kv-blocks 12 ran instances of
    278 blocks); the smaller of the two holds now, and dedicating it stays at the cap."""
    worker.prewarm(tiny_models["tiny-llama"])
    reply = worker.activate("tiny-llama", kv_blocks=30, shared=True, engine=P.EngineConfig(max_kv_blocks=6))
    assert reply.kv_blocks == 6 and worker.core.instances["tiny-llama"].engine.kv.total_blocks == 6
    assert worker.dedicate("tiny-llama").kv.kv_blocks_total == 6


def test_a_stream_dropped_unfinished_is_aborted_and_forgotten(worker, tiny_models):
    """Found in review: a stream left after its first event ran on to max_tokens on the worker, and its events
    piled up in the client for ever. Now the client's next call aborts it; close() and `with` end one at once."""
    import gc

    worker.prewarm(tiny_models["tiny-llama"])
    worker.activate("tiny-llama")
    long = P.SamplingParams(max_tokens=400, ignore_eos=True)
    s = worker.generate("tiny-llama", [1, 2, 3], long)
    assert next(iter(s)).token_ids
    del s
    gc.collect()
    with worker.generate("tiny-llama", [4, 5], long) as s2:
        assert next(iter(s2)).token_ids
    for _ in range(20):  # the aborts land as the worker turns
        worker.core.tick()
    assert worker.stats().in_flight == 0 and not worker.core.generations
    assert list(worker._inbox) == [] and s2.done


def test_an_idle_instance_maps_its_kv_target_without_a_request(worker, tiny_models):
    """Found in review: mapping toward a raised target happened only in engine steps (a step's worth at a time), so
    an idle instance kept the headroom reserved for a burst unmapped until the burst's first request."""
    worker.prewarm(tiny_models["tiny-llama"])
    worker.activate("tiny-llama", kv_blocks=64, kv_target_free_blocks=0)
    first = worker.set_kv_target("tiny-llama", 40).kv
    assert first.kv_blocks_free < 40  # one step's worth at once, the rest over the next ticks
    for _ in range(50):  # the worker's loop turns while idle (every 50 ms at most in `warmserve worker`)
        worker.core.tick()
        kv = worker.stats().instances[0].kv
        if kv.kv_blocks_free >= 40:
            break
    assert kv.kv_blocks_free == kv.kv_blocks_mapped == 40 and kv.kv_blocks_used == 0


def test_evict_during_a_load_cancels_it_and_rolls_back(worker, tiny_models):
    free0 = worker.stats().pool.free_bytes
    prewarm = P.Prewarm(id=worker._new_id(), path=tiny_models["tiny-deep"])
    worker._inbox[prewarm.id] = collections.deque()
    worker._send(prewarm)  # sent, not waited for: the load runs in the memory manager's threads
    assert [m.state for m in worker.stats().models] == ["loading"]
    ev = worker.evict("tiny-deep")
    assert ev.name == "tiny-deep"
    err = worker._next(prewarm.id, 10.0)
    assert isinstance(err, P.Error) and err.type == "CancelledError"
    st = worker.stats()
    assert st.models == [] and st.pool.free_bytes == free0


def test_deactivate_gives_the_kv_pages_back(worker, tiny_models):
    worker.prewarm(tiny_models["tiny-llama"])
    free_prewarmed = worker.stats().pool.free_bytes
    worker.activate("tiny-llama")
    worker.generate("tiny-llama", [1, 2, 3], GREEDY8).collect()
    st = worker.stats()
    (inst,) = st.instances
    assert inst.kv_pages == inst.kv.kv_blocks_mapped > 0  # one page per block for this model
    assert st.pool.free_bytes == free_prewarmed - inst.kv_pages * (2 << 20)
    assert st.pool.pages_by_tag["instance:tiny-llama"] == inst.kv_pages + st.models[0].pages
    worker.deactivate("tiny-llama")
    st = worker.stats()
    assert st.pool.free_bytes == free_prewarmed
    assert [(m.name, m.state) for m in st.models] == [("tiny-llama", "prewarmed")]


def test_activation_with_a_kv_reservation_leaves_the_rest_of_the_pool_for_prewarming(worker, tiny_models):
    worker.prewarm(tiny_models["tiny-llama"])
    worker.activate("tiny-llama", kv_target_free_blocks=2)
    worker.generate("tiny-llama", [1, 2, 3], GREEDY8).collect()
    (inst,) = worker.stats().instances
    assert inst.kv.kv_blocks_free == 2 and inst.kv.kv_blocks_mapped == 2
    worker.prewarm(tiny_models["tiny-deep"])  # fits beside the running instance
    assert {m.name: m.state for m in worker.stats().models} == {"tiny-llama": "running", "tiny-deep": "prewarmed"}


def test_activation_takes_the_engine_limits_it_is_sent(worker, tiny_models):
    """Activate.engine sets the instance's limits (the cluster's [engine] table reaches remote workers this way);
    without one, an instance runs as many sequences as the policy plans with by default."""
    from warmserve.engine.engine import DEFAULT_MAX_NUM_SEQS
    from warmserve.policy.config import PolicyConfig

    assert DEFAULT_MAX_NUM_SEQS == PolicyConfig().instance_capacity
    worker.prewarm(tiny_models["tiny-llama"])
    worker.activate("tiny-llama", engine=P.EngineConfig(max_num_seqs=1, max_batch_tokens=64, max_kv_blocks=3))
    eng = worker.core.instances["tiny-llama"].engine
    assert (eng.scheduler.max_num_seqs, eng.scheduler.max_batch_tokens, eng.kv.total_blocks) == (1, 64, 3)
    streams = [worker.generate("tiny-llama", [1, 2, 3], GREEDY8) for _ in range(2)]
    assert [len(s.collect()[0]) for s in streams] == [8, 8]  # one at a time, both complete
    worker.deactivate("tiny-llama")
    worker.activate("tiny-llama")
    assert worker.core.instances["tiny-llama"].engine.scheduler.max_num_seqs == DEFAULT_MAX_NUM_SEQS
