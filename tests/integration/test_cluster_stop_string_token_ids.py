"""A stop string through a real Cluster: Completion.logprobs has one entry per token of token_ids. Found in review:
with a stop string that begins at a token boundary, token_ids kept the stop string's token (3 ids) while the
logprobs left it out (2). token_ids and logprobs list the tokens of the text; completion_tokens counts through the
token that completed the stop string (docs/api.md)."""

import warmserve
from warmserve.engine.tokenizer import Tokenizer

import serving

MODEL = "llama-20m"
PROMPT = "Once upon"

cluster = serving.cluster_fixture(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20)


def test_token_ids_and_logprobs_leave_out_the_stop_strings_tokens_alike(cluster):
    params = dict(max_tokens=24, ignore_eos=True, temperature=0)
    base = cluster.generate(MODEL, PROMPT, params=warmserve.SamplingParams(**params))
    ids = list(base.token_ids)
    decode = Tokenizer(serving.demo_paths()[MODEL]).decode
    # stop strings that begin where token j begins: its whole text, first seen there
    cases = [(j, decode([ids[j]])) for j in range(2, len(ids))]
    cases = [(j, s) for j, s in cases if s.strip() and base.text.find(s) == len(decode(ids[:j]))][:3]
    assert cases, base.text
    for j, stop in cases:
        out = cluster.generate(MODEL, PROMPT, params=warmserve.SamplingParams(stop=(stop,), logprobs=0, **params))
        assert out.finish_reason == "stop" and out.text == decode(ids[:j]), stop
        assert list(out.token_ids) == ids[:j] and len(out.logprobs) == j, (stop, len(out.token_ids))
        assert out.completion_tokens == j + 1, stop
