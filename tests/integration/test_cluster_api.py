"""`warmserve.Cluster` takes the one `SamplingParams` the HTTP API builds (every engine option, logprobs
included) as well as its keywords, and refuses a mix of both."""

import math

import pytest

import warmserve
from warmserve.errors import InvalidArgumentError

import serving

MODEL = "llama-20m"

cluster = serving.cluster_fixture(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20)


def test_params_flow_to_the_engine_with_logprobs(cluster):
    params = warmserve.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=2)
    out = cluster.generate(MODEL, [5, 17, 300], params=params)
    assert isinstance(out, warmserve.Completion)
    assert out.completion_tokens == 6 and len(out.logprobs) == 6
    for tid, lp in zip(out.token_ids, out.logprobs):
        assert lp.logprob <= 0 and not math.isnan(lp.logprob)
        assert len(lp.top_ids) == 2 and lp.top_logprobs[0] >= lp.top_logprobs[1]
        assert lp.top_ids[0] == tid and lp.top_logprobs[0] == lp.logprob  # greedy: the most likely token
    same = cluster.generate(MODEL, [5, 17, 300], max_tokens=6, temperature=0)
    assert same.token_ids == out.token_ids and same.logprobs == () and same.prompt_logprobs == ()
    assert "".join(cluster.stream(MODEL, [5, 17, 300], params=params)) == out.text
    # the prompt's own (found in review: accepted, and nowhere in the result): one per token but the first, the
    # prompt token itself among the alternatives where it is the most likely
    scored = cluster.generate(MODEL, [5, 17, 300], params=warmserve.SamplingParams(max_tokens=1, prompt_logprobs=1))
    assert len(scored.prompt_logprobs) == 2
    for tid, lp in zip([17, 300], scored.prompt_logprobs):
        assert lp.logprob <= 0 and not math.isnan(lp.logprob) and len(lp.top_ids) == 1
        assert lp.top_logprobs[0] >= lp.logprob and (lp.top_ids[0] != tid or lp.top_logprobs[0] == lp.logprob)


def test_params_and_keywords_together_are_refused(cluster):
    with pytest.raises(InvalidArgumentError, match=r"not both \(also given: \['max_tokens'\]\)"):
        cluster.generate(MODEL, "x", params=warmserve.SamplingParams(), max_tokens=3)
    with pytest.raises(InvalidArgumentError, match="must be a warmserve.SamplingParams"):
        cluster.generate(MODEL, "x", params={"max_tokens": 3})


def test_a_generate_that_times_out_is_aborted_on_its_worker(cluster):
    """Found in review: generate(timeout_s=...) raised the built-in TimeoutError and left the generation running
    to max_tokens, holding its sequence and KV blocks."""
    import time

    from warmserve.errors import TimeoutError_

    params = warmserve.SamplingParams(max_tokens=1500, temperature=0.0, ignore_eos=True)
    with pytest.raises(TimeoutError_, match="cancelled"):
        cluster.generate(MODEL, [5, 17, 300], params=params, timeout_s=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = cluster.stats()
        if all(i["in_flight"] == 0 for i in st["instances"]) and not any(st["queued"].values()):
            break
        time.sleep(0.1)
    assert all(i["in_flight"] == 0 for i in st["instances"]), st["instances"]
    assert len(cluster.generate(MODEL, [5], max_tokens=3, temperature=0).token_ids) == 3  # and it serves on


def test_messages_are_checked_as_the_http_api_checks_them(cluster):
    """Found in review: the Python API sent a list of content parts as its Python repr, took role "tool" and an
    empty list, and dropped a prompt given with messages, where the HTTP API answers 400."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    plain = [{"role": "user", "content": "hi"}]
    assert cluster.generate(MODEL, messages=parts, max_tokens=3, temperature=0).token_ids == \
        cluster.generate(MODEL, messages=plain, max_tokens=3, temperature=0).token_ids
    for bad, param in (([{"role": "tool", "content": "x"}], "messages"), ([], "messages"),
                       ([{"content": "no role"}], "messages")):
        with pytest.raises(InvalidArgumentError) as e:
            cluster.generate(MODEL, messages=bad, max_tokens=2)
        assert e.value.param == param
    with pytest.raises(InvalidArgumentError, match="not both") as e:
        cluster.generate(MODEL, "a prompt", messages=plain, max_tokens=2)
    assert e.value.param == "prompt"


def test_min_tokens_holds_back_a_stop_string_and_a_stop_token_end_to_end(cluster):
    """vLLM's min_tokens, through the cluster's text stream and a real worker: a stop string or stop token id the
    greedy output meets in its first tokens ends it only past min_tokens (it was silently ignored before)."""
    plain = cluster.generate(MODEL, [5, 17, 300], max_tokens=12, temperature=0)
    assert len(plain.token_ids) == 12
    stop = next(c for c in plain.text[1:] if c.strip())  # a character the greedy text has early
    early = cluster.generate(MODEL, [5, 17, 300], max_tokens=12, temperature=0, stop=[stop])
    assert len(early.token_ids) < 12
    held = cluster.generate(MODEL, [5, 17, 300], params=warmserve.SamplingParams(
        max_tokens=12, temperature=0.0, stop=(stop,), min_tokens=12))
    assert held.token_ids == plain.token_ids and held.text == plain.text
    by_id = warmserve.SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=(plain.token_ids[1],),
                                     min_tokens=8)
    out = cluster.generate(MODEL, [5, 17, 300], params=by_id)
    assert len(out.token_ids) >= 8 and plain.token_ids[1] not in out.token_ids[:8]


def test_keywords_left_out_take_the_checkpoints_generation_config_and_config_stands_alone(tmp_path):
    """Found in review: the HTTP API took a checkpoint's generation_config.json sampling for the fields a request
    leaves out (as vLLM), but Cluster.generate sampled at temperature 1 all the same; and Cluster(config=cfg) was a
    bare TypeError (models had no default). A copy of the demo checkpoint whose generation_config.json says
    temperature 0: three generations without a temperature are the greedy one; an explicit temperature wins."""
    import json
    import shutil

    from warmserve.config import ClusterConfig, ModelSpec

    path = tmp_path / "gc"
    shutil.copytree(serving.demo_paths((MODEL,))[MODEL], path)
    gen_file = path / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    gen_file.write_text(json.dumps({**gen, "temperature": 0.0, "do_sample": True}))
    cfg = ClusterConfig(models=(ModelSpec(path=str(path), name="gc"),), cpu_workers=1,
                        cpu_worker_memory_bytes=512 << 20, cpu_worker_threads=1)
    with warmserve.Cluster(config=cfg) as c:
        assert c.controller.model("gc").sampling_defaults == {"temperature": 0.0}
        greedy = c.generate("gc", [5, 17, 300], params=warmserve.SamplingParams(max_tokens=8))  # its default: 0
        left_out = [c.generate("gc", [5, 17, 300], max_tokens=8).token_ids for _ in range(3)]
        assert all(ids == greedy.token_ids for ids in left_out), (left_out, greedy.token_ids)
        hot = [c.generate("gc", [5, 17, 300], max_tokens=8, temperature=2.0, top_p=1.0).token_ids for _ in range(3)]
        assert any(ids != greedy.token_ids for ids in hot)  # random weights at temperature 2: near uniform
