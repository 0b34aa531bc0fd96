"""Continuous batching, preemption, stop conditions, sampling and the KV target, on real slots."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from warmserve.engine import Engine, SamplingParams, Tokenizer, load_model
from warmserve.engine.sampler import filter_logits
from warmserve.errors import ClosedError, InvalidArgumentError, PromptTooLongError

from kv_counting import count_allocations


def _prompts(n, length, seed=0, vocab=512):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (length + 7 * i,), generator=g).tolist() for i in range(n)]


def _drain(eng):
    outs, steps = {}, []
    while eng.has_unfinished():
        step = eng.step()
        steps.append(step)
        for o in step:
            outs.setdefault(o.request_id, []).extend(o.token_ids)
    return outs, steps


def test_preemption_by_recompute_gives_the_same_tokens(lm):
    prompts = _prompts(4, 200)
    params = SamplingParams(max_tokens=90, ignore_eos=True)
    with Engine(lm) as eng:
        want = eng.generate(prompts, params)
    with Engine(lm, kv_blocks=3) as eng:  # each request needs 2 blocks: at most one runs to the end at a time
        got = eng.generate(prompts, params)
        assert eng.kv_stats().num_preemptions > 0
        assert eng.kv_stats().kv_blocks_used == 0
    assert got == want


def test_a_resumption_goes_on_after_the_tokens_it_had_out(lm):
    """A request resumed elsewhere (protocol.Generate.output_ids) with its first 12 tokens: the engine recomputes
    them with the prompt, reports only what follows, with one logprob per new token, and stops at max_tokens
    counting them."""
    prompts = _prompts(2, 50)
    params = SamplingParams(max_tokens=30, ignore_eos=True, logprobs=1)
    with Engine(lm) as eng:
        want = eng.generate(prompts, params)
    with Engine(lm) as eng:
        for i, p in enumerate(prompts):
            eng.add_request(str(i), p, params, want[i][:12])
        outs, steps = _drain(eng)
        for o in (o for step in steps for o in step):
            assert len(o.logprobs) == len(o.token_ids)
            assert o.num_output_tokens <= 30
        with pytest.raises(InvalidArgumentError, match="nothing left to generate"):
            eng.add_request("done", prompts[0], params, want[0])
    assert [outs[str(i)] for i in range(2)] == [w[12:] for w in want]


def test_a_seeded_resumption_goes_on_with_the_draws_it_would_have_made(lm):
    """Found in review: a seeded request resumed elsewhere after k tokens drew again from its seed, so its next
    tokens repeated its first draws' noise. Now draw k depends on the seed and k alone."""
    prompts = _prompts(2, 40)
    params = [SamplingParams(max_tokens=24, temperature=1.0, seed=s, ignore_eos=True) for s in (7, 2**63 + 5)]
    with Engine(lm) as eng:
        want = [eng.generate([p], sp)[0] for p, sp in zip(prompts, params)]
    assert want[0] != want[1]
    with Engine(lm) as eng:
        for i, (p, sp) in enumerate(zip(prompts, params)):
            eng.add_request(str(i), p, sp, want[i][:9])
        outs, _ = _drain(eng)
    assert [outs[str(i)] for i in range(2)] == [w[9:] for w in want]


def test_generate_with_logits_gives_the_logits_each_token_was_sampled_from(lm):
    prompts = _prompts(3, 20)
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    with Engine(lm) as eng:
        want = eng.generate(prompts, params)
        toks, logits = eng.generate_with_logits(prompts, params)
        assert not eng.record_logits  # set for the run only
    assert toks == want
    for t, lg in zip(toks, logits):
        assert lg.shape == (6, 512) and lg.dtype == torch.float32
        assert lg.argmax(-1).tolist() == t  # greedy: each token is its row's argmax


def test_streaming_batches_prefill_with_decode_and_counts(lm):
    with Engine(lm, max_batch_tokens=64) as eng:
        eng.add_request("a", _prompts(1, 20)[0], SamplingParams(max_tokens=10, ignore_eos=True))
        first = eng.step()
        assert [o.request_id for o in first] == ["a"] and len(first[0].token_ids) == 1
        eng.add_request("b", _prompts(1, 150, seed=3)[0], SamplingParams(max_tokens=5, ignore_eos=True))
        second = eng.step()  # a decodes while b's prompt is prefilled in chunks under the 64-token budget
        assert [o.request_id for o in second] == ["a"]
        assert eng.num_running == 2 and eng.num_waiting == 0
        outs, steps = _drain(eng)
        last = {o.request_id: o for s in steps for o in s}
        assert last["a"].finished and last["a"].finish_reason == "length" and last["a"].num_output_tokens == 10
        assert last["b"].num_prompt_tokens == 150 and len(outs["b"]) == 5
        assert all(len(o.token_ids) == 1 for s in steps for o in s)


def test_stop_token_eos_and_stop_strings_left_to_the_caller(lm, tiny_dir, tmp_path, pool):
    prompt = _prompts(1, 12)[0]
    with Engine(lm) as eng:
        free_run = eng.generate([prompt], SamplingParams(max_tokens=24, ignore_eos=True))[0]
        x = free_run[6]
        cut = free_run.index(x) + 1
        out = eng.generate([prompt], SamplingParams(max_tokens=24, stop_token_ids=(x,)))[0]
        assert out == free_run[:cut]
        # stop strings are the controller's (it detokenizes): the engine sees ids and runs on past one
        tok = Tokenizer(tiny_dir["tiny-linear"])
        stop = tok.decode(free_run[8:10], skip_special_tokens=False) or "x"
        out = eng.generate([prompt], SamplingParams(max_tokens=24, stop=(stop,), ignore_eos=True))[0]
        assert out == free_run
    # EOS from generation_config.json ends a request unless ignore_eos
    path = tmp_path / "eos"
    shutil.copytree(tiny_dir["tiny-linear"], path)
    gen = json.load(open(path / "generation_config.json"))
    gen["eos_token_id"] = [x, 100000]
    (path / "generation_config.json").write_text(json.dumps(gen))
    m = load_model(str(path), pool).wait()
    try:
        with Engine(m) as eng:
            eng.add_request("e", prompt, SamplingParams(max_tokens=24))
            outs, steps = _drain(eng)
            assert outs["e"] == free_run[:cut] and steps[-1][0].finish_reason == "stop"
            assert eng.generate([prompt], SamplingParams(max_tokens=24, ignore_eos=True))[0] == free_run
    finally:
        m.close()


def test_abort_reports_and_frees(lm):
    with Engine(lm) as eng:
        for rid in "ab":
            eng.add_request(rid, _prompts(1, 30)[0], SamplingParams(max_tokens=50, ignore_eos=True))
        eng.step()
        used = eng.kv_stats().kv_blocks_used
        assert eng.abort("a") and not eng.abort("nope")
        assert eng.kv_stats().kv_blocks_used == used - 1
        out = eng.step()
        aborted = [o for o in out if o.request_id == "a"]
        assert aborted[0].finished and aborted[0].finish_reason == "abort" and aborted[0].token_ids == []
        outs, _ = _drain(eng)
        assert len(outs["b"]) == 48


def test_seeded_sampling_is_reproducible_and_batch_independent(lm):
    p = _prompts(3, 10)
    sp = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    with Engine(lm) as eng:
        alone = eng.generate([p[0]], sp)[0]
        rid_outs = eng.generate([p[1], p[0], p[2]], sp)
        assert rid_outs[1] == alone
        other = eng.generate([p[0]], SamplingParams(max_tokens=20, temperature=1.0, seed=8, ignore_eos=True))[0]
        assert other != alone
        greedy = eng.generate([p[0]], SamplingParams(max_tokens=20, ignore_eos=True))[0]
        assert eng.generate([p[0]], SamplingParams(max_tokens=20, temperature=0.8, top_k=1,
                                                   ignore_eos=True))[0] == greedy
        assert eng.generate([p[0]], SamplingParams(max_tokens=20, temperature=0.8, top_p=1e-6,
                                                   ignore_eos=True))[0] == greedy


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [False, False, True, True]
    assert torch.isinf(filter_logits(logits, 0, 0.75)).tolist() == [False, False, True, True]
    assert torch.isinf(filter_logits(logits, 0, 0.5)).tolist() == [False, True, True, True]


def test_bad_requests_are_typed_errors(lm):
    with Engine(lm) as eng:
        with pytest.raises(PromptTooLongError) as e:
            eng.add_request("x", [1] * 4000, SamplingParams(max_tokens=200))
        assert e.value.prompt_tokens == 4000 and e.value.max_context == lm.max_context
        with pytest.raises(InvalidArgumentError):
            eng.add_request("x", [], SamplingParams())
        with pytest.raises(InvalidArgumentError):
            eng.add_request("x", [10**6], SamplingParams())
        eng.add_request("x", [1, 2], SamplingParams())
        with pytest.raises(InvalidArgumentError):
            eng.add_request("x", [1, 2], SamplingParams())
        for bad in (dict(max_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(stop=("",)),
                    dict(temperature=2.5), dict(seed=2 ** 64), dict(stop_token_ids=(-1,))):
            with pytest.raises(InvalidArgumentError):
                SamplingParams(**bad)
    with pytest.raises(ClosedError):
        eng.step()


def test_kv_maps_lazily_shrinks_and_grows_while_generating(lm, pool):
    ppb = lm.kv_bytes_per_block // pool.page_bytes
    with Engine(lm, max_num_seqs=8, target_free_blocks=2) as eng:
        st = eng.kv_stats()
        assert st.kv_blocks_mapped == 2 < st.kv_blocks_total  # lazily: only the headroom is mapped
        prompts = _prompts(6, 260)  # each needs 2 blocks
        for i, p in enumerate(prompts):
            eng.add_request(str(i), p, SamplingParams(max_tokens=40, ignore_eos=True))
        first = eng.step()
        st = eng.kv_stats()
        assert st.kv_blocks_used == 12 and st.kv_blocks_mapped >= 12  # mapped on demand beyond the target
        free_before, mapped_before = pool.free_pages, st.kv_blocks_mapped
        st = eng.set_kv_target_free_blocks(0)  # shrink while generating: only free blocks go
        assert st.kv_blocks_free == 0 and st.kv_blocks_used == 12
        assert pool.free_pages - free_before == (mapped_before - st.kv_blocks_mapped) * ppb
        mapped_kv_pages = lm.slot.mapped_pages - lm.weight_region_bytes // pool.page_bytes
        assert mapped_kv_pages == st.kv_blocks_mapped * ppb
        st = eng.set_kv_target_free_blocks(5)  # grow: pages come back from the pool
        assert st.kv_blocks_free == 5
        outs, _ = _drain(eng)
        assert all(len(outs[o.request_id]) + len(o.token_ids) == 40 for o in first)
        st = eng.kv_stats()
        assert st.kv_blocks_used == 0 and st.kv_blocks_free == 5 and st.kv_blocks_mapped == 5
        eng.set_kv_target_free_blocks(0)
        assert lm.slot.mapped_pages == lm.weight_region_bytes // pool.page_bytes


def test_pool_running_out_of_pages_preempts_and_still_finishes(lm, tiny_dir):
    from warmserve.memory import PagePool

    prompts = _prompts(4, 200)
    params = SamplingParams(max_tokens=90, ignore_eos=True)
    with Engine(lm) as eng:
        want = eng.generate(prompts, params)
    pages = lm.weight_region_bytes // lm.slot.page_bytes + 3 * lm.kv_bytes_per_block // lm.slot.page_bytes
    with PagePool(pages * lm.slot.page_bytes) as small:
        m = load_model(tiny_dir["tiny-linear"], small).wait()
        try:
            with Engine(m) as eng:  # room for 3 blocks in the pool; the 4 requests need 8 at once
                got = eng.generate(prompts, params)
                assert eng.kv_stats().num_preemptions > 0
                assert small.free_pages <= 3 * m.kv_bytes_per_block // small.page_bytes
        finally:
            m.close()
        assert small.free_pages == small.total_pages
    assert got == want


def test_prompt_logprobs_survive_a_preemption_in_the_middle_of_a_chunked_prefill(lm, tiny_dir):
    """Room for 3 blocks and steps of 40 tokens: the 300-token prompt is prefilled in chunks shifted by the other
    request's decodes, preempted when that one needs a block, and prefilled again in chunks that start elsewhere.
    It still gets one prompt logprob per prompt token after the first, equal to an unpreempted run's (it used to
    wait for a chunk starting exactly where the kept ones ended, and returned 264 of 299)."""
    from warmserve.memory import PagePool

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (250, 300)]
    params = SamplingParams(max_tokens=20, ignore_eos=True, prompt_logprobs=1)

    def run(eng):
        for i, p in enumerate(prompts):
            eng.add_request(str(i), p, params)
        out = {}
        while eng.has_unfinished():
            for o in eng.step():
                if o.prompt_logprobs is not None:
                    out[o.request_id] = o.prompt_logprobs
        return out

    with Engine(lm, max_batch_tokens=40) as eng:
        want = run(eng)
        assert eng.kv_stats().num_preemptions == 0
    pages = lm.weight_region_bytes // lm.slot.page_bytes + 3 * lm.kv_bytes_per_block // lm.slot.page_bytes
    with PagePool(pages * lm.slot.page_bytes) as small:
        m = load_model(tiny_dir["tiny-linear"], small).wait()
        try:
            with Engine(m, max_batch_tokens=40) as eng:
                got = run(eng)
                assert eng.kv_stats().num_preemptions > 0
        finally:
            m.close()
    for i, p in enumerate(prompts):
        assert len(got[str(i)]) == len(want[str(i)]) == len(p) - 1
        for a, b in zip(got[str(i)], want[str(i)]):
            assert a.top_ids == b.top_ids and abs(a.logprob - b.logprob) < 1e-4


def test_blocks_wanted_counts_what_the_next_schedule_allocates(lm):
    """The count a tensor-parallel shard maps ahead of each step (worker/tp.py): exactly what schedule() then
    takes, at every step of a mixed run (new prefills, chunked prefills, decodes crossing block boundaries)."""
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    with Engine(lm, max_batch_tokens=300) as eng:
        taken = count_allocations(eng)
        for i, p in enumerate(_prompts(5, 230, seed=3)):
            eng.add_request(str(i), p, params)
        steps_with_blocks = 0
        while eng.has_unfinished():
            wanted = eng.scheduler.blocks_wanted()
            taken.clear()
            eng.step()
            assert eng.scheduler.num_preemptions == 0
            assert len(taken) == wanted
            steps_with_blocks += wanted > 0
        assert steps_with_blocks > 5
