"""Per-step host costs of the sampler, found in review: min_tokens rebuilt the held-back ids from every stop_token_id
(up to 262,144, accepted over HTTP) at each step (a 4-request batch's step went 3.1 -> 13.0 ms), and the penalties
rebuilt the set of the whole prompt and the counts of the whole output at each decode step (845 ms a step for 8 rows
of 128k-token prompts). Now a sequence keeps what vLLM keeps (sampler.SamplerState on the Sequence): the held-back
ids once, the prompt's seen ids once, the output's counts token by token. The tests below count the walks over the
whole prompt, output and stop list while the sampler runs, and compare the logits and tokens with the old formula
(kept here as the reference) across steps, after a preemption and a resumption. Speed: bench/engine/sampler_costs.py.
"""

from __future__ import annotations

import random

import msgspec
import pytest
import torch

import warmserve.engine.engine as engine_mod
from warmserve.engine import Engine, SamplingParams
from warmserve.engine.sampler import choose

from tiny_checkpoints import TINY_VOCAB


# ---- the old formula, as it was before the fix (the reference) ----------------------------------------------------
def old_penalize(logits, p, prompt, output):
    logits = logits.clone()
    vocab = logits.shape[-1]
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt) | set(output)), dtype=torch.long, device=logits.device)
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if output and (p.presence_penalty or p.frequency_penalty):
        counts = torch.bincount(torch.tensor(list(output), device=logits.device), minlength=vocab)[:vocab]
        logits -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def old_adjust(logits, params, histories, eos=()):
    if histories is not None and any(p.penalized or p.min_tokens for p in params):
        logits = logits.clone()
        vocab = logits.shape[-1]
        for i, p in enumerate(params):
            output = histories[i][1]
            held = [] if len(output) >= p.min_tokens else [*p.stop_token_ids, *(() if p.ignore_eos else eos)]
            held = [t for t in held if t < vocab]
            if held:
                logits[i, torch.tensor(held, dtype=torch.long, device=logits.device)] = float("-inf")
            if p.penalized:
                logits[i] = old_penalize(logits[i], p, *histories[i])
    return logits


def old_sample(logits, params, generators, histories=None, eos=(), *_states):
    return choose(old_adjust(logits, params, histories, eos), params, generators)


# ---- walks over the whole prompt, output and stop list while the sampler runs -------------------------------------
class _Walked:
    active = False  # set while the engine's call into the sampler runs

    def __iter__(self):
        if _Walked.active:
            self.walks += 1
        return super().__iter__()


class WalkedList(_Walked, list):
    walks = 0


class WalkedTuple(_Walked, tuple):
    walks = 0


@pytest.fixture
def watch_sampler(monkeypatch):
    real = engine_mod.sample

    def watched(*args, **kwargs):
        _Walked.active = True
        try:
            return real(*args, **kwargs)
        finally:
            _Walked.active = False

    monkeypatch.setattr(engine_mod, "sample", watched)


def _prompt(n, seed=0):
    return torch.randint(0, TINY_VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("penalty", [dict(repetition_penalty=1.3), dict(frequency_penalty=0.4),
                                     dict(presence_penalty=0.7)])
def test_the_prompt_and_output_are_walked_once_per_request_not_at_every_step(lm, watch_sampler, penalty):
    with Engine(lm) as eng:
        eng.add_request("a", _prompt(40), SamplingParams(max_tokens=16, ignore_eos=True, seed=3, **penalty))
        seq = eng.seqs["a"]
        seq.prompt, seq.output = WalkedList(seq.prompt), WalkedList(seq.output)
        prompt, output = seq.prompt, seq.output
        while eng.has_unfinished():
            eng.step()
        assert len(output) == 16
    # before: set(prompt) | set(output) (repetition) or list(output) (presence/frequency) at each of 16 steps
    assert prompt.walks + output.walks <= 1


def test_the_stop_ids_are_walked_once_per_request_while_min_tokens_holds_them_back(lm, watch_sampler):
    ids = list(range(300, TINY_VOCAB)) + list(range(TINY_VOCAB, TINY_VOCAB + 5000))  # past the vocabulary too
    with Engine(lm) as eng:
        params = SamplingParams(max_tokens=16, min_tokens=14, stop_token_ids=ids, seed=5)
        eng.add_request("a", _prompt(30, 1), params)
        p = eng.seqs["a"].params
        msgspec.structs.force_setattr(p, "stop_token_ids", WalkedTuple(p.stop_token_ids))
        while eng.has_unfinished():
            out = eng.step()
    # before: [*stop_token_ids, *eos] rebuilt and filtered at each of the 14 steps short of min_tokens
    assert p.stop_token_ids.walks <= 1
    assert out[0].num_output_tokens >= 14


# ---- the same logits and tokens as the old formula ---------------------------------------------------------------
def _params(rng, vocab):
    pen = rng.choice([{}, dict(repetition_penalty=rng.choice([0.7, 1.3])),
                      dict(presence_penalty=rng.uniform(-1, 1), frequency_penalty=rng.uniform(-1, 1)),
                      dict(repetition_penalty=1.5, presence_penalty=0.5, frequency_penalty=0.25)])
    stop = rng.choice([(), [rng.randrange(vocab) for _ in range(50)] * 2 + [vocab, vocab + 7, (1 << 63) - 1]])
    return SamplingParams(temperature=rng.choice([0.0, 0.8]), min_tokens=rng.choice([0, 3, 12]), stop_token_ids=stop,
                          ignore_eos=rng.random() < 0.3, **pen)


def _bits(x: torch.Tensor) -> list:
    return x.view(torch.int32).tolist()


def test_adjusted_logits_equal_the_old_formula_across_steps_and_rebuilds():
    from warmserve.engine.sampler import SamplerState, adjust_logits

    rng, vocab, rows = random.Random(7), 1000, 24
    g = torch.Generator().manual_seed(7)
    params = [_params(rng, vocab) for _ in range(rows)]
    # the rows whose lists change below use every part of the state
    params[:3] = [SamplingParams(repetition_penalty=1.3, presence_penalty=-0.5, frequency_penalty=-0.2,
                                 max_tokens=99, min_tokens=30,
                                 stop_token_ids=[4, 4, 8, vocab + 1])] * 3
    hist = [([rng.randrange(vocab // 3) for _ in range(rng.randrange(1, 400))],
             [rng.randrange(vocab) for _ in range(rng.choice([0, 0, 5]))]) for _ in range(rows)]
    states = [SamplerState() for _ in range(rows)]
    eos = {vocab - 1, 2, vocab + 3}  # one past the vocabulary: ignored
    for step in range(25):
        logits = torch.randn(rows, vocab, generator=g) * 4
        logits[:, ::97] = float("-inf")
        logits[:, 1::89], logits[:, 2::89] = -0.0, 0.0  # even a zero's sign stays
        got = adjust_logits(logits, params, hist, eos, states)
        assert _bits(got) == _bits(old_adjust(logits, params, hist, eos)), step
        assert _bits(adjust_logits(logits, params, hist, eos)) == _bits(got)  # no states: built from scratch
        for st in states:  # each id once in the index tensors: repeated tokens do not grow them
            for ids in (st.seen, st.counted_ids):
                assert ids is None or len(set(ids.index.tolist())) == ids.index.numel()
        for i, (_, out) in enumerate(hist):
            out.append(rng.randrange(vocab // 2) if rng.random() < 0.7 else rng.randrange(vocab))
        if step == 10:  # a sequence's output list replaced (a resumption), another's cut short: rebuilt
            hist[0] = (hist[0][0], list(hist[0][1]) + [5, 5])
            del hist[1][1][-3:]
        if step == 12:
            eos = {5, vocab - 2}  # other EOS ids: held back instead
        if step == 15:
            hist[2] = (list(hist[2][0]) + [9], hist[2][1])  # another prompt list, and one grown in place
            hist[1][0].append(vocab - 5)


def test_sampled_tokens_equal_the_old_formula_with_seeded_draws():
    from warmserve.engine.sampler import SamplerState, sample

    rng, vocab, rows = random.Random(11), 700, 16
    g = torch.Generator().manual_seed(11)
    params = [_params(rng, vocab) for _ in range(rows)]
    hist = [([rng.randrange(vocab) for _ in range(rng.randrange(1, 200))], []) for _ in range(rows)]
    states = [SamplerState() for _ in range(rows)]
    for step in range(30):
        logits = torch.randn(rows, vocab, generator=g) * 3
        gens = [torch.Generator().manual_seed(1000 * step + i) for i in range(rows)]
        ref = [torch.Generator().manual_seed(1000 * step + i) for i in range(rows)]
        got = sample(logits, params, gens, hist, {0, 1}, states)
        assert got == old_sample(logits, params, ref, hist, {0, 1}), step
        for (_, out), t in zip(hist, got):
            out.append(t)


def _run(lm, requests, sampler=None, kv_blocks=None, monkeypatch=None):
    if sampler is not None:
        monkeypatch.setattr(engine_mod, "sample", sampler)
    outs, reasons = {}, {}
    with Engine(lm, kv_blocks=kv_blocks) as eng:
        for rid, prompt, params, done in requests:
            eng.add_request(rid, prompt, params, done)
        while eng.has_unfinished():
            for o in eng.step():
                outs.setdefault(o.request_id, []).extend(o.token_ids)
                if o.finished:
                    reasons[o.request_id] = (o.finish_reason, o.stop_reason)
        preemptions = eng.kv_stats().num_preemptions
    if sampler is not None:
        monkeypatch.undo()
    return outs, reasons, preemptions


def test_the_engine_gives_the_old_formulas_tokens_with_preemption_and_resumption(lm, monkeypatch):
    """Seeded draws with penalties, min_tokens over stop ids (past the vocabulary too) and EOS: the same tokens and
    finish reasons as the old formula, in a roomy cache and in one of 3 blocks where requests are preempted and
    recomputed (their output, and with it their sampler state, kept), and for a resumption with tokens out."""
    stops = list(range(0, 200)) + [TINY_VOCAB, TINY_VOCAB + 1]
    kinds = [dict(repetition_penalty=1.4), dict(frequency_penalty=0.6, presence_penalty=0.3),
             dict(repetition_penalty=0.8, presence_penalty=-0.5, min_tokens=40, stop_token_ids=stops),
             dict(min_tokens=30, stop_token_ids=stops[100:])]  # EOS (0, 2) held back as EOS
    reqs = [(f"r{i}", _prompt(200 + 7 * i, i), SamplingParams(max_tokens=60, seed=i, temperature=0.9, **k), ())
            for i, k in enumerate(kinds)]
    reqs.append(("resumed", _prompt(150, 9), SamplingParams(max_tokens=50, seed=9, min_tokens=20, stop_token_ids=stops,
                                                            frequency_penalty=0.5, repetition_penalty=1.2),
                 _prompt(12, 10)))
    want = _run(lm, reqs, old_sample, monkeypatch=monkeypatch)
    got = _run(lm, reqs)
    assert got[:2] == want[:2]
    # min_tokens held the stops back, then one ended it (the resumption had 12 out already)
    lengths = {rid: len(got[0][rid]) for rid in ("r2", "r3", "resumed")}
    assert lengths["r2"] >= 40 and lengths["r3"] >= 30 and lengths["resumed"] >= 8, lengths
    assert [got[1][rid][0] for rid in ("r2", "r3", "resumed")] == ["stop"] * 3
    tight = _run(lm, reqs, kv_blocks=3)
    assert tight[2] > 0 and tight[:2] == want[:2]


def test_an_id_the_old_formula_refused_is_refused_and_the_state_is_rebuilt_after():
    from warmserve.engine.sampler import SamplerState, penalize

    p, row, prompt = SamplingParams(repetition_penalty=1.2, frequency_penalty=0.3), torch.randn(50), [3, 4, 3]
    output, state = [1, 60], SamplerState()  # 60: past the vocabulary
    for fn in (old_penalize, lambda *a: penalize(*a, state)):
        with pytest.raises(IndexError):
            fn(row, p, prompt, output)
    output[1] = 7  # the same lists, now valid: nothing half-added stays behind
    assert _bits(penalize(row, p, prompt, output, state)) == _bits(old_penalize(row, p, prompt, output))
