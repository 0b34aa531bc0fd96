"""Per-step host cost of the sampler's penalties and min_tokens: the old formula (rebuilt from the whole prompt,
output and stop list at each step, kept here as the reference) against the new one (sampler.SamplerState, kept per
sequence), side by side, for the cases the review measured:

- min_tokens with 262,144 stop_token_ids, 8 rows at a 152k vocabulary (sample());
- repetition / frequency penalties with 1k, 32k and 128k-token prompts, 8 rows at a 152k vocabulary (sample());
- an engine step (tiny checkpoint, host pool) of 3 plain requests and one with min_tokens and 262,144 stop ids.

Each step appends one token to every row's output, as decoding does. CPU, one thread; well under a minute.
Run: ``python3 bench/engine/sampler_costs.py`` (PYTHONPATH=python where warmserve is not installed).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time

import torch

import warmserve.engine.engine as engine_mod
from warmserve.engine.sampler import SamplerState, choose, sample
from warmserve.sampling import SamplingParams

V, B, STEPS = 152064, 8, 4


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


def old_sample(logits, params, generators, histories=None, eos=(), *_states):
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
    return choose(logits, params, generators)


def per_step(fn, params, prompts, outputs, eos, states=None) -> tuple[float, list[list[int]]]:
    """Median ms of STEPS steps after a first one (which builds the states), each appending a token per row."""
    hist = [(pr, list(o)) for pr, o in zip(prompts, outputs)]
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(0))
    got, ts = [], []
    for step in range(STEPS + 1):
        t = time.perf_counter()
        toks = fn(logits, params, [None] * B, hist, eos, *([states] if states is not None else []))
        if step:
            ts.append(time.perf_counter() - t)
        got.append(toks)
        for (_, o), tok in zip(hist, toks):
            o.append(tok)
    return statistics.median(ts) * 1e3, got


def sampler_cases() -> None:
    rng = random.Random(0)
    print(f"sample(), {B} rows, vocabulary {V}, median of {STEPS} decode steps (ms):")
    print(f"  {'case':52s} {'old':>9s} {'new':>9s}")
    short = [[1, 2, 3]] * B
    for name, sp in [("plain (no penalty, no min_tokens)", SamplingParams(max_tokens=200)),
                     ("min_tokens=100", SamplingParams(max_tokens=200, min_tokens=100)),
                     ("min_tokens=100 + 262144 stop ids",
                      SamplingParams(max_tokens=200, min_tokens=100, stop_token_ids=tuple(range(1 << 18))))]:
        row(name, [sp] * B, short, [[]] * B, (0,))
    for L in (1000, 32000, 128000):
        prompts = [[rng.randrange(V) for _ in range(L)] for _ in range(B)]
        outputs = [[rng.randrange(V) for _ in range(500)] for _ in range(B)]
        for name, sp in [("repetition_penalty=1.1", SamplingParams(repetition_penalty=1.1)),
                         ("frequency_penalty=0.5", SamplingParams(frequency_penalty=0.5))]:
            row(f"prompt {L}, output 500+, {name}", [sp] * B, prompts, outputs, ())


def row(name, params, prompts, outputs, eos) -> None:
    old, want = per_step(old_sample, params, prompts, outputs, eos)
    new, got = per_step(sample, params, prompts, outputs, eos, [SamplerState() for _ in params])
    print(f"  {name:52s} {old:9.1f} {new:9.1f}{'' if got == want else '   TOKENS DIFFER'}", flush=True)


def engine_case() -> None:
    from warmserve.engine import Engine, load_model
    from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint
    from warmserve.memory import PagePool

    spec = DemoSpec("llama", 64, 128, 2, 4, 2, rope_scaling=(("factor", 2.0), ("rope_type", "linear")),
                    vocab_size=512)  # tests/unit/engine/tiny_checkpoints.py's tiny-linear
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (20 + 7 * i,), generator=g).tolist() for i in range(4)]
    with tempfile.TemporaryDirectory() as d, PagePool(768 << 20, backend="host") as pool:
        lm = load_model(write_checkpoint(d, "tiny", config_dict(spec), tokenizer=build_tokenizer(512)), pool).wait()
        print("engine step, tiny checkpoint: 3 plain requests + 1 with min_tokens=50 and 262144 stop ids, "
              "median step (ms):")
        extra = SamplingParams(max_tokens=60, min_tokens=50, stop_token_ids=tuple(range(1 << 18)))
        res = {}
        for label, fn in (("old", old_sample), ("new", sample)):
            engine_mod.sample = fn
            try:
                with Engine(lm) as eng:
                    for i, p in enumerate(prompts[:3]):
                        eng.add_request(f"n{i}", p, SamplingParams(max_tokens=60, ignore_eos=True))
                    eng.add_request("x", prompts[3], extra)
                    eng.step()
                    ts = []
                    while eng.has_unfinished():
                        t = time.perf_counter()
                        eng.step()
                        ts.append(time.perf_counter() - t)
                res[label] = statistics.median(ts) * 1e3
            finally:
                engine_mod.sample = sample
        print(f"  {'old':>9s} {'new':>9s}\n  {res['old']:9.1f} {res['new']:9.1f}")
        lm.close()


if __name__ == "__main__":
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sampler_cases()
    engine_case()
    print(f"({time.perf_counter() - t0:.0f} s in all)")
