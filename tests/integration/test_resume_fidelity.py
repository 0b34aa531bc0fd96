"""A request whose worker is SIGKILLed after it streamed tokens resumes on another instance after them
(controller/losses.py, protocol.Generate.output_ids): what the client gets must be what a fault-free run gives, in
every part the engine derives from the tokens before the resume point (penalties, min_tokens, max_tokens) and in
the per-token data the controller joins across the two instances (one logprob per token, none twice, none
missing; the usage; the finish reason). Greedy only for the token ids: a seeded draw after the resume point comes
from logits recomputed by a prefill, about 1e-6 off the decode's, so it may rarely pick another token (seen live:
1 of 9 seeds, 400 tokens); its lengths are checked all the same."""

import asyncio
import os
import signal
import time

from warmserve.engine import SamplingParams

import serving

MODEL = "llama-20m"
BOUND_S = 60.0
#: Penalties and min_tokens over the whole output: a resumption that forgot the tokens before it would change
#: the text after it; logprobs 2, so each token's entry is there to count.
GREEDY = SamplingParams(max_tokens=80, min_tokens=70, temperature=0.0, ignore_eos=True, logprobs=2,
                        presence_penalty=0.8, frequency_penalty=0.6, repetition_penalty=1.2)
SEEDED = SamplingParams(max_tokens=80, temperature=0.8, seed=7, ignore_eos=True, logprobs=1)

cluster = serving.cluster_fixture(models=(MODEL,), cpu_worker_memory_bytes=512 << 20)


def _wait_ready(c, n: int = 2) -> None:
    """Both workers back (a killed local worker restarts) and idle, so each case starts from the same cluster."""
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        ws = c.stats()["workers"]
        if sum(w["ready"] and w["alive"] for w in ws) >= n and all(w["in_flight"] == 0 for w in ws if w["alive"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"workers not ready again within {BOUND_S} s: {c.stats()['workers']}")


def _killed_midway(c, prompt: str, params: SamplingParams, after: int = 12):
    """The completion of ``prompt`` with its worker SIGKILLed once it has streamed ``after`` tokens."""
    ctl = c.controller

    async def run():
        task = asyncio.ensure_future(c.agenerate(MODEL, prompt, params=params))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            busy = [(w, r) for w in list(ctl.gpu_workers) for r in list(w.gens.values()) if r.generated >= after]
            if busy:
                os.kill(busy[0][0].pid, signal.SIGKILL)
                return await asyncio.wait_for(task, BOUND_S), busy[0][1]
            await asyncio.sleep(0.005)
        raise AssertionError("the request never streamed enough tokens to be killed midway")

    return asyncio.run(run())


def _same_shape(got, want, params: SamplingParams) -> None:
    assert got.completion_tokens == want.completion_tokens == params.max_tokens
    assert got.prompt_tokens == want.prompt_tokens
    assert len(got.token_ids) == len(got.logprobs) == params.max_tokens, (len(got.token_ids), len(got.logprobs))
    assert got.finish_reason == want.finish_reason == "length"
    # Each entry belongs to its token: the chosen token's logprob is among its top ones when it is the argmax.
    for tok, lp in zip(got.token_ids, got.logprobs):
        assert tok not in lp.top_ids or abs(lp.top_logprobs[lp.top_ids.index(tok)] - lp.logprob) < 1e-4


def _fault_free_then_killed(c, prompt: str, params: SamplingParams):
    """(fault-free output, resumed output, its request): the same request run whole, then with its worker killed;
    both of the same shape (``_same_shape``)."""
    _wait_ready(c)
    want = c.generate(MODEL, prompt, params=params)
    _wait_ready(c)
    got, req = _killed_midway(c, prompt, params)
    _same_shape(got, want, params)
    return want, got, req


def test_a_greedy_request_resumed_after_a_kill_matches_a_fault_free_run(cluster):
    want, got, req = _fault_free_then_killed(cluster, "a story that goes on after its worker dies", GREEDY)
    assert req.reroutes == 1 and cluster.controller.metrics.resumed.get(model=MODEL, why="worker_lost") >= 1
    assert got.token_ids == want.token_ids and got.text == want.text
    # The logprobs at the resume point come from the second instance: the same values, none shifted by one.
    assert max(abs(a.logprob - b.logprob) for a, b in zip(got.logprobs, want.logprobs)) < 1e-3
    assert [lp.top_ids for lp in got.logprobs] == [lp.top_ids for lp in want.logprobs]


def test_a_seeded_request_resumed_after_a_kill_keeps_one_logprob_per_token_and_its_usage(cluster):
    want, got, _ = _fault_free_then_killed(cluster, "a seeded story that goes on after its worker dies", SEEDED)
    # Up to the resume point the tokens are the first instance's own, so they are the fault-free run's.
    assert got.token_ids[:12] == want.token_ids[:12]
