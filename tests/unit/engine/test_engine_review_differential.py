"""Differential checks from review: a request's tokens, finish reason and logprobs are the same alone and in a
crowded engine (arrivals at other steps, prompts of 1 to 300 tokens, chunked prefill, KV pressure that preempts
and recomputes, a neighbour aborted mid-generation, per-step token budgets), for greedy rows with penalties,
min_tokens and stop_token_ids, for seeded sampling (the sampler's promise: a seeded row's draws depend on its seed
and token index alone), and for resumptions (output_token_ids), whose earlier tokens the penalties must count.

CPU fp32 logits differ in the last bits between batch shapes (about 1e-6, sampler.py's docstring); these
requests' top-2 logit gaps and draws lie far from such ties on tiny-linear (checked when the tests were written)."""

from __future__ import annotations

import msgspec
import torch

from warmserve.engine import Engine, SamplingParams

LENGTHS = (1, 5, 37, 130, 300, 255)


def _prompts(lengths=LENGTHS, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 512, (n,), generator=g).tolist() for n in lengths]


def _run(eng: Engine, reqs: list[dict], budgets=None, abort: tuple[str, int] | None = None) -> dict:
    """Step until every request of ``reqs`` (rid, prompt, params, at: the step it arrives, done: output ids of a
    resumption) ends; ``budgets``: step(max_tokens) in turn; ``abort``: (rid, step). {rid: [tokens, logprobs,
    finish reason]}."""
    out = {r["rid"]: [[], [], None] for r in reqs}
    pending, step = list(reqs), 0
    while pending or eng.has_unfinished():
        for r in [r for r in pending if r.get("at", 0) <= step]:
            eng.add_request(r["rid"], r["prompt"], r["params"], r.get("done", ()))
            pending.remove(r)
        if abort is not None and abort[1] == step:
            assert eng.abort(abort[0])
        for o in eng.step(budgets[step % len(budgets)] if budgets else None):
            got = out[o.request_id]
            got[0] += o.token_ids
            got[1] += o.logprobs or []
            got[2] = o.finish_reason if o.finished else None
        step += 1
        assert step < 2000
    return out


def _alone(lm, reqs: list[dict]) -> dict:
    with Engine(lm) as eng:
        return {r["rid"]: _run(eng, [{**r, "at": 0}])[r["rid"]] for r in reqs}


def _assert_same(got: dict, want: dict) -> None:
    for rid, (toks, lps, reason) in want.items():
        assert got[rid][0] == toks, f"request {rid}: tokens differ from its run alone"
        assert got[rid][2] == reason, f"request {rid}: finish reason"
        assert len(got[rid][1]) == len(lps)
        for a, b in zip(got[rid][1], lps):
            assert a.top_ids == b.top_ids and abs(a.logprob - b.logprob) < 1e-4, f"request {rid}: logprobs"


def _crowded(lm, reqs: list[dict], **kw) -> tuple[dict, int]:
    """Run reqs beside a 200-token neighbour aborted at step 6, in steps of at most 16 tokens (chunked prefill),
    with room for 2 KV blocks of 256 tokens (a 300-token prompt needs both: preemption)."""
    noise = {"rid": "noise", "prompt": _prompts((200,), seed=9)[0], "at": 1,
             "params": SamplingParams(max_tokens=40, ignore_eos=True, temperature=1.0, seed=3)}
    with Engine(lm, max_batch_tokens=16, kv_blocks=2) as eng:
        got = _run(eng, reqs + [noise], abort=("noise", 6), **kw)
        preemptions = eng.kv_stats().num_preemptions
    assert got.pop("noise")[2] == "abort"
    return got, preemptions


def test_greedy_tokens_stops_and_logprobs_do_not_depend_on_the_batch(lm):
    prompts = _prompts()
    with Engine(lm) as eng:
        free = eng.generate(prompts, SamplingParams(max_tokens=24, ignore_eos=True))
    # stop ids the requests reach: one at the 3rd token with min_tokens 8 (held back until then), one at the 10th
    params = [SamplingParams(max_tokens=24, ignore_eos=True, logprobs=2),
              SamplingParams(max_tokens=24, stop_token_ids=(free[1][2],), min_tokens=8, logprobs=0),
              SamplingParams(max_tokens=24, ignore_eos=True, repetition_penalty=1.3, presence_penalty=0.5,
                             frequency_penalty=0.7, logprobs=1),
              SamplingParams(max_tokens=1, logprobs=3),
              SamplingParams(max_tokens=24, stop_token_ids=(free[4][9], 7), ignore_eos=True),
              SamplingParams(max_tokens=20, ignore_eos=True, repetition_penalty=0.8, frequency_penalty=-0.5,
                             min_tokens=20, stop_token_ids=(free[5][0],))]
    reqs = [{"rid": str(i), "prompt": p, "params": sp, "at": at}
            for i, (p, sp, at) in enumerate(zip(prompts, params, (3, 0, 7, 1, 12, 5)))]
    want = _alone(lm, reqs)
    assert want["1"][2] == want["4"][2] == "stop" and len(want["1"][0]) >= 8
    got, preemptions = _crowded(lm, reqs)
    assert preemptions > 0
    _assert_same(got, want)


def test_seeded_sampling_gives_its_tokens_alone_in_a_crowd_and_under_any_step_budget(lm):
    """sampler.py's promise: a seeded row's token depends on its logits, seed and token index alone."""
    prompts = _prompts(seed=2)
    params = [SamplingParams(max_tokens=24, temperature=0.9, top_p=0.9, seed=11, ignore_eos=True, logprobs=1),
              SamplingParams(max_tokens=24, temperature=1.2, top_k=40, min_p=0.05, seed=5, ignore_eos=True,
                             repetition_penalty=1.2, frequency_penalty=0.3),
              SamplingParams(max_tokens=30, temperature=0.7, seed=3, min_tokens=10),
              SamplingParams(max_tokens=24, temperature=1.5, top_p=0.5, seed=2**64 - 1, ignore_eos=True,
                             presence_penalty=-1.0),
              SamplingParams(max_tokens=24, temperature=1.0, seed=11, ignore_eos=True),
              SamplingParams(max_tokens=24, temperature=1.0, seed=11, ignore_eos=True, logprobs=0)]
    reqs = [{"rid": str(i), "prompt": p, "params": sp, "at": at}
            for i, (p, sp, at) in enumerate(zip(prompts, params, (2, 0, 4, 0, 0, 1)))]
    want = _alone(lm, reqs)
    got, preemptions = _crowded(lm, reqs, budgets=(1, 3, 50, 2))
    assert preemptions > 0
    _assert_same(got, want)


def test_a_resumption_in_a_crowd_counts_its_earlier_tokens_for_penalties(lm):
    """Requests resumed after k tokens (output_token_ids) among others, preempted and chunked, go on with the
    tokens of their uninterrupted run alone: frequency/presence/repetition penalties count the tokens given as
    output, and seeded draws go on at index k."""
    prompts = _prompts((40, 300, 250, 130), seed=3)
    # frequency -0.2: request 0 falls into a loop of the tokens it has out, which the cut must carry over
    params = [SamplingParams(max_tokens=20, ignore_eos=True, frequency_penalty=-0.2, logprobs=1),
              SamplingParams(max_tokens=20, temperature=1.0, seed=7, ignore_eos=True, frequency_penalty=2.0),
              SamplingParams(max_tokens=20, ignore_eos=True, repetition_penalty=2.0),
              SamplingParams(max_tokens=20, temperature=0.8, top_k=20, seed=4, ignore_eos=True,
                             presence_penalty=2.0, repetition_penalty=1.4)]
    reqs = [{"rid": str(i), "prompt": p, "params": sp} for i, (p, sp) in enumerate(zip(prompts, params))]
    whole = _alone(lm, reqs)
    cut = (6, 11, 3, 8)
    resumed = [{**r, "done": whole[r["rid"]][0][:k], "at": at} for r, k, at in zip(reqs, cut, (3, 0, 2, 1))]
    # counting them matters: the same tokens given as prompt, which frequency does not count, go on with others
    moved = _alone(lm, [{**reqs[0], "prompt": prompts[0] + whole["0"][0][:6],
                         "params": msgspec.structs.replace(params[0], max_tokens=14)}])
    assert moved["0"][0] != whole["0"][0][6:]
    got, preemptions = _crowded(lm, resumed)
    assert preemptions > 0
    _assert_same(got, {rid: [toks[k:], lps[k:], reason] for (rid, (toks, lps, reason)), k in zip(whole.items(), cut)})
