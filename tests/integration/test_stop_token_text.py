"""A request that a stop token id ended, through a real Cluster: the token is the output's last (token_ids, usage)
but its text is left out, streamed or not, as vLLM leaves it out. Found in review: the text kept it."""

import warmserve
from warmserve.engine.tokenizer import Tokenizer

import serving

MODEL = "llama-20m"
PROMPT = [5, 17, 300]

cluster = serving.cluster_fixture(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20)


def test_the_stop_token_is_a_token_of_the_output_but_not_its_text(cluster):
    base = cluster.generate(MODEL, PROMPT, params=warmserve.SamplingParams(max_tokens=8, ignore_eos=True))
    ids = list(base.token_ids)
    k = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])  # its first occurrence ends the request
    decode = Tokenizer(serving.demo_paths()[MODEL]).decode
    params = warmserve.SamplingParams(max_tokens=8, ignore_eos=True, stop_token_ids=(ids[k],))
    out = cluster.generate(MODEL, PROMPT, params=params)
    assert out.finish_reason == "stop" and list(out.token_ids) == ids[:k + 1] and out.completion_tokens == k + 1
    assert out.text == decode(ids[:k]) != decode(ids[:k + 1])
    assert "".join(cluster.stream(MODEL, PROMPT, params=params)) == out.text
