"""Requests that must not wait forever for KV blocks (found in review), on real page-limited pools.

The cap counted blocks the pool can never give (the model's own weights take part of it), so a request past what
exists was accepted and never ended; a half-done chunked prefill that could get no block held its blocks and
waited, so two instances on one pool each holding half a prefill never ended, and reported stalled=False (a
worker spun a core on them); an activation whose KV growth failed left its blocks mapped in the slot.
"""

from __future__ import annotations

import contextlib
import random

import pytest
import torch

from warmserve import _C
from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.errors import DriverError, NoRoomHereError, PromptTooLongError
from warmserve.memory import PagePool

#: Rounds of steps within which every test here finishes when nothing hangs (each needs a few dozen).
MAX_ROUNDS = 400
#: Free KV blocks the engines keep mapped ahead: none, fewer than a request needs, more than the pool holds (live
#: instances never run with 0: the engine's default is 8, the policy's SetKvTarget at least 1).
TARGETS = [0, 2, 8]


@pytest.fixture
def ref_lm(tiny_dir, pool):
    """The model on the roomy session pool: reference outputs, and its weight and block sizes."""
    m = load_model(tiny_dir["tiny-linear"], pool).wait()
    yield m
    m.close()


def _prompt(n, seed=0):
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _reference(lm, prompt, params):
    with Engine(lm) as eng:
        return eng.generate([prompt], params)[0]


@contextlib.contextmanager
def _two_on_a_small_pool(tiny_dir, ref_lm):
    """(pool, model a, model b): two copies of the tiny model loaded on a pool that holds both weights and 4 KV
    blocks."""
    with PagePool(2 * ref_lm.weight_region_bytes + 4 * ref_lm.kv_bytes_per_block) as small:
        ma = load_model(tiny_dir["tiny-linear"], small).wait()
        mb = load_model(tiny_dir["tiny-linear"], small).wait()
        try:
            yield small, ma, mb
        finally:
            ma.close()
            mb.close()


def _step(eng, out: dict) -> None:
    """One step that collects tokens; a step that ran nothing must say stalled (or a worker spins on it)."""
    before = eng.num_steps
    for o in eng.step():
        out.setdefault(o.request_id, []).extend(o.token_ids)
    assert eng.num_steps > before or eng.stalled or not eng.has_unfinished(), (
        f"a step ran nothing and says it is not stalled: running {eng.num_running}, waiting {eng.num_waiting}, "
        f"blocks used {eng.kv.num_used}")


@pytest.mark.parametrize("max_batch_tokens", [2048, 256])
def test_a_request_needing_more_blocks_than_the_pool_holds_is_refused_with_the_numbers(tiny_dir, ref_lm,
                                                                                      max_batch_tokens):
    """The pool holds the weights and 3 blocks: a 4-block request is refused at once (it was accepted and
    waited forever, or with chunked prefill held 3 blocks and said stalled=False), and a 3-block one runs."""
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    fits = _prompt(3 * 256 - 10, seed=1)
    want = _reference(ref_lm, fits, params)
    with PagePool(ref_lm.weight_region_bytes + 3 * ref_lm.kv_bytes_per_block) as small:
        m = load_model(tiny_dir["tiny-linear"], small).wait()
        try:
            with Engine(m, max_batch_tokens=max_batch_tokens) as eng:
                with pytest.raises(PromptTooLongError) as err:
                    eng.add_request("big", _prompt(4 * 256 - 10), params)
                assert (err.value.blocks_needed, err.value.kv_blocks) == (4, 3)
                assert "larger pool" in str(err.value)
                assert type(err.value) is PromptTooLongError  # no instance on a pool this size would hold it
                assert m.kv_capacity_blocks == eng.kv.total_blocks == 3
                eng.add_request("fits", fits, params)
                out: dict = {}
                for _ in range(MAX_ROUNDS):
                    if not eng.has_unfinished():
                        break
                    _step(eng, out)
                assert out == {"fits": want}
        finally:
            m.close()


def test_a_kv_share_past_what_the_pool_holds_admits_no_request_past_the_pool(tiny_dir, ref_lm):
    """A worker's kv_blocks (or its configuration's max_kv_blocks) larger than the pool's room after the weights:
    requests are sized to what the pool holds (they were sized to the share, and one past the pool waited
    forever); a server-filled max_tokens is lowered to it."""
    with PagePool(ref_lm.weight_region_bytes + 3 * ref_lm.kv_bytes_per_block) as small:
        m = load_model(tiny_dir["tiny-linear"], small).wait()
        try:
            with Engine(m, kv_blocks=4) as eng:
                with pytest.raises(PromptTooLongError) as err:
                    eng.add_request("big", _prompt(4 * 256 - 10), SamplingParams(max_tokens=5, ignore_eos=True))
                assert (err.value.blocks_needed, err.value.kv_blocks) == (4, 3)
                defaulted = SamplingParams(max_tokens=10_000, max_tokens_defaulted=True, ignore_eos=True)
                eng.add_request("filled", _prompt(3 * 256 - 10), defaulted)
                out: dict = {}
                for _ in range(MAX_ROUNDS):
                    if not eng.has_unfinished():
                        break
                    _step(eng, out)
                assert len(out["filled"]) == 11  # 10 + the last, which gets no K/V
        finally:
            m.close()


@pytest.mark.parametrize("target", TARGETS)
def test_a_request_waiting_for_pages_another_model_holds_keeps_no_blocks_and_says_stalled(tiny_dir, ref_lm, target):
    """The request fits the pool less its own weights, but a prewarmed model holds a block's worth of its pages.
    Its chunked prefill runs out part way: it gives its blocks back and waits, stalled (it held 4 blocks and said
    stalled=False forever), without recomputing the same chunks again and again, and keeps none of them mapped as
    headroom (with a target > 0 they stayed mapped); once that model is evicted it finishes with a roomy run's
    tokens."""
    bb = ref_lm.kv_bytes_per_block
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    with _two_on_a_small_pool(tiny_dir, ref_lm) as (small, ma, mb):
        with Engine(ma, max_batch_tokens=256, target_free_blocks=target) as eng:
            need = eng.kv.total_blocks  # all the blocks the pool would hold without mb
            assert need * bb > 4 * bb
            prompt = _prompt(need * 256 - 10)
            want = _reference(ref_lm, prompt, params)
            eng.add_request("r", prompt, params)
            out: dict = {}
            for _ in range(need + 10):
                _step(eng, out)
            ran = eng.num_steps
            for _ in range(10):
                _step(eng, out)
            assert eng.stalled and eng.num_steps == ran, "it recomputes chunks it cannot finish"
            assert eng.kv.num_used == 0 and small.free_bytes == 4 * bb
            mb.close()
            for _ in range(MAX_ROUNDS):
                if not eng.has_unfinished():
                    break
                _step(eng, out)
            assert out == {"r": want}


@pytest.mark.parametrize("target", TARGETS)
def test_two_instances_on_one_pool_with_half_done_prefills_both_finish(tiny_dir, ref_lm, target):
    """Two instances on one pool with room for 4 blocks, each with a 3-block request prefilled 256 tokens a step:
    both held 2 blocks and waited for a third forever. One now gives its blocks back; both finish with the tokens
    of a roomy run, whatever free blocks they keep mapped ahead (with a target > 0 the preempted one's blocks
    stayed mapped on its engine, or the other kept them as headroom, and one or both waited forever)."""
    wb, bb = ref_lm.weight_region_bytes, ref_lm.kv_bytes_per_block
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    prompts = [_prompt(700, seed) for seed in (0, 1)]
    want = [_reference(ref_lm, p, params) for p in prompts]
    with PagePool(2 * wb + 4 * bb) as small:
        models = [load_model(tiny_dir["tiny-linear"], small).wait() for _ in prompts]
        try:
            engines = [Engine(m, max_batch_tokens=256, target_free_blocks=target) for m in models]
            outs: list[dict] = [{} for _ in engines]
            for eng, p in zip(engines, prompts):
                eng.add_request("r", p, params)
            for _ in range(MAX_ROUNDS):
                if not any(e.has_unfinished() for e in engines):
                    break
                for eng, out in zip(engines, outs):
                    _step(eng, out)
            assert outs == [{"r": w} for w in want], (
                f"blocks used {[e.kv.num_used for e in engines]}, pool pages free {small.free_pages}")
            for eng in engines:
                eng.close()
        finally:
            for m in models:
                m.close()


@pytest.mark.parametrize("target", [2, 8])
def test_an_idle_instances_headroom_goes_to_a_stalled_neighbour_on_its_pool(tiny_dir, ref_lm, target):
    """Instance A keeps `target` free blocks mapped ahead and is never stepped (a worker only grows an idle
    instance's headroom); instance B on the same pool needs 3 of the pool's 4 blocks. B takes A's free blocks back
    once it stalls and finishes with a roomy run's tokens (it waited forever: A's headroom was never given back)."""
    wb, bb = ref_lm.weight_region_bytes, ref_lm.kv_bytes_per_block
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    prompt = _prompt(700, seed=3)
    want = _reference(ref_lm, prompt, params)
    with PagePool(2 * wb + 4 * bb) as small:
        ma, mb = (load_model(tiny_dir["tiny-linear"], small).wait() for _ in range(2))
        try:
            with Engine(ma, target_free_blocks=target) as idle, \
                    Engine(mb, max_batch_tokens=256, target_free_blocks=target) as eng:
                held = idle.kv.num_free_mapped
                assert held == min(target, 4)
                eng.add_request("r", prompt, params)
                out: dict = {}
                for _ in range(MAX_ROUNDS):
                    if not eng.has_unfinished():
                        break
                    _step(eng, out)
                assert out == {"r": want}, (f"free blocks mapped: idle {idle.kv.num_free_mapped}, stalled "
                                            f"{eng.kv.num_free_mapped}; pool pages free {small.free_pages}")
                assert idle.kv.num_free_mapped < held
        finally:
            ma.close()
            mb.close()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("seed", [0, 1, 5, 6])  # seeds whose instances meet half-done prefills
def test_instances_stepped_in_turn_on_a_tight_pool_give_a_roomy_runs_tokens(tiny_dir, ref_lm, seed, target):
    """Random requests (greedy, seeded, with prompt logprobs) on 2 or 3 instances of one pool with room for the
    largest request and little more, small token budgets: preemptions of half-done prefills happen, every request
    ends with the tokens and prompt logprobs of a roomy run, and no step that ran nothing says it is not stalled."""
    rng = random.Random(seed)
    wb, bb = ref_lm.weight_region_bytes, ref_lm.kv_bytes_per_block
    n_eng = rng.choice([2, 3])
    reqs = []
    for e in range(n_eng):
        for i in range(rng.randint(1, 2)):
            prompt = [rng.randrange(512) for _ in range(rng.choice([1, 100, 300, 500, 700]))]
            if rng.random() < 0.5:
                params = SamplingParams(max_tokens=rng.choice([1, 8, 40]), ignore_eos=True, prompt_logprobs=1)
            else:
                params = SamplingParams(max_tokens=rng.choice([1, 8, 40]), ignore_eos=True, temperature=1.0,
                                        seed=rng.randrange(100))
            reqs.append((e, f"{e}-{i}", prompt, params))
    need = max(-(-(len(p) + sp.max_tokens) // 256) for _, _, p, sp in reqs)
    with PagePool(n_eng * wb + (need + rng.randint(0, 1)) * bb) as small:
        models = [load_model(tiny_dir["tiny-linear"], small).wait() for _ in range(n_eng)]
        try:
            engines = [Engine(m, max_batch_tokens=rng.choice([17, 64, 256, 300]), max_num_seqs=rng.randint(1, 3),
                              target_free_blocks=target) for m in models]
            outs: list[dict] = [{} for _ in engines]
            plps = {}
            for e, rid, p, sp in reqs:
                engines[e].add_request(rid, p, sp)
            for _ in range(20 * MAX_ROUNDS):
                if not any(e.has_unfinished() for e in engines):
                    break
                for eng, out in zip(engines, outs):
                    before = eng.num_steps
                    for o in eng.step():
                        out.setdefault(o.request_id, []).extend(o.token_ids)
                        if o.prompt_logprobs is not None:
                            plps[o.request_id] = [x.top_ids for x in o.prompt_logprobs]
                    assert eng.num_steps > before or eng.stalled or not eng.has_unfinished(), "a spin"
            assert not any(e.has_unfinished() for e in engines), f"blocks used {[e.kv.num_used for e in engines]}"
            for eng in engines:
                assert eng.kv.num_used == 0
                eng.close()
        finally:
            for m in models:
                m.close()
        assert small.free_pages == small.total_pages
    for e, rid, p, sp in reqs:
        with Engine(ref_lm) as ref:
            ref.add_request(rid, p, sp)
            toks, want_plp = [], None
            while ref.has_unfinished():
                for o in ref.step():
                    toks += o.token_ids
                    if o.prompt_logprobs is not None:
                        want_plp = [x.top_ids for x in o.prompt_logprobs]
        assert outs[e][rid] == toks, rid
        assert plps.get(rid) == want_plp, rid


def test_a_map_error_while_activating_gives_the_kv_blocks_back(tiny_dir, monkeypatch):
    """The 3rd KV block's map fails (a driver error, not out-of-memory) while the engine maps its first free
    blocks: the two mapped before it go back to the pool and the model can be activated again (they stayed in
    the slot, and every later activation failed: "map of pages ... overlaps page 1, which is already mapped")."""
    monkeypatch.setenv("WARMSERVE_HOST_NO_MREMAP", "1")  # every map is an mmap, which the fault hook counts
    with PagePool(64 << 20, backend="host") as small:
        m = load_model(tiny_dir["tiny-linear"], small).wait()
        try:
            pages, free = m.slot.mapped_pages, small.free_pages
            _C._debug_fail_after("mmap", 3)
            try:
                with pytest.raises(DriverError):
                    Engine(m, target_free_blocks=4)
            finally:
                _C._debug_fail_after("mmap", 0)
            assert (m.slot.mapped_pages, small.free_pages) == (pages, free)
            assert not m.active
            with Engine(m) as eng:
                assert len(eng.generate([_prompt(20)], SamplingParams(max_tokens=3, ignore_eos=True))[0]) == 3
        finally:
            m.close()


def test_a_waiting_request_a_new_neighbour_leaves_no_room_for_ends_with_the_numbers(tiny_dir, ref_lm):
    """A request admitted while its engine was alone on the pool needs every block the pool holds after its
    weights; then a second model starts serving there, and beside its weights that many blocks never come free.
    The request used to wait at the head of the queue for good, with the one behind it; it ends now with a
    NoRoomHereError that names the neighbour (StepOutput.error, which a worker answers with), and the next
    request runs with a roomy run's tokens."""
    wb, bb = ref_lm.weight_region_bytes, ref_lm.kv_bytes_per_block
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    with _two_on_a_small_pool(tiny_dir, ref_lm) as (small, ma, mb):
        with Engine(ma, target_free_blocks=0) as a:
            blocks = a.max_kv_blocks
            assert blocks == (wb + 4 * bb) // bb > 4
            long, short = _prompt(blocks * 256 - 7), _prompt(100, 1)  # long: + 8 - 1 tokens, `blocks` blocks
            want = _reference(ref_lm, short, params)
            a.add_request("long", long, params)
            a.add_request("short", short, params)
            with Engine(mb, target_free_blocks=0):
                out, errors = {}, {}
                for _ in range(MAX_ROUNDS):
                    if not a.has_unfinished():
                        break
                    for o in a.step():
                        if o.error is not None:
                            errors[o.request_id] = (o.finish_reason, o.error)
                        else:
                            out.setdefault(o.request_id, []).extend(o.token_ids)
                assert list(errors) == ["long"], f"waiting {a.num_waiting}, running {a.num_running}"
                reason, err = errors["long"]
                assert reason == "error" and isinstance(err, NoRoomHereError)
                assert (err.kv_blocks, err.blocks_needed) == (4, blocks) and "tiny-linear" in err.message
                assert out == {"short": want}


def test_a_defaulted_max_tokens_that_fits_only_alone_is_sent_to_an_instance_alone(tiny_dir, ref_lm):
    """Found by an engine fuzz: beside a neighbour's weights the pool leaves 2 blocks, alone 3; a 767-token prompt
    with a server-filled max_tokens was refused with PromptTooLongError (final, telling the client to lower a
    max_tokens it never set). Now NoRoomHereError, which the controller sends on to an instance alone; alone it
    is admitted, max_tokens lowered to what 3 blocks hold."""
    defaulted = SamplingParams(max_tokens=16, max_tokens_defaulted=True, ignore_eos=True)
    with PagePool(2 * ref_lm.weight_region_bytes + 2 * ref_lm.kv_bytes_per_block) as shared:
        a = load_model(tiny_dir["tiny-linear"], shared).wait()
        b = load_model(tiny_dir["tiny-linear"], shared).wait()
        try:
            with Engine(a) as ea:
                with Engine(b):
                    with pytest.raises(NoRoomHereError, match="beside the weights of"):
                        ea.add_request("x", _prompt(3 * 256 - 1), defaulted)
                ea.add_request("y", _prompt(3 * 256 - 1), defaulted)  # its neighbour closed
                assert ea.seqs["y"].params.max_tokens == 2  # 3 blocks hold 768 tokens, and the last needs no K/V
        finally:
            a.close()
            b.close()
