"""Each OpenAI parameter warmserve implements (and the ones it refuses), with the official `openai` client against
a real `warmserve serve` (CPU workers, the demo checkpoints), streaming and not. Numbers are checked against
transformers' own implementation of the same fp32 checkpoint."""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import serving

openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MODEL = serving.MODELS[0]  # llama-20m
PROMPT_IDS = [5, 77, 301, 12, 9, 150, 4]


server = serving.server_fixture("params", stop_timeout_s=30, log_level="WARNING", start_timeout_s=120,
                                restart_backoff_s=None)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The transformers references run in this process, on one torch thread as the server's CPU workers run: with
    two on a 2-core machine that is busy otherwise, each small forward pass waits on the other thread (seconds a
    test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load_hf(path: str):
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    return model, tok


@pytest.fixture(scope="module")
def hf_loading():
    """transformers' model and tokenizer, loading on a thread while the server starts: each takes seconds, and
    this process only waits for the server meanwhile. hf() hands them (or the load's exception) to the test."""
    path = serving.demo_paths()[MODEL]  # written here, before the thread reads them and the server starts
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(_load_hf, path)


@pytest.fixture(scope="module")
def client(hf_loading, server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def hf(hf_loading):
    return hf_loading.result(timeout=300)


def _hf_greedy(model, prompt, steps, adjust=None):
    """Greedy continuation by transformers' logits, with ``adjust(logits, output)`` applied before argmax; returns
    the ids and the log-softmax (of the raw logits) at each chosen token, and the raw log-softmax rows."""
    seq, out, rows = list(prompt), [], []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1].float()
        rows.append(torch.log_softmax(logits, -1))
        pick = adjust(logits.clone(), out) if adjust else logits
        t = int(pick.argmax())
        out.append(t)
        seq.append(t)
    return out, rows


def _greedy(extra_body=None, **kw):
    return dict(model=MODEL, prompt=PROMPT_IDS, temperature=0, extra_body={"ignore_eos": True, **(extra_body or {})},
                **kw)


def test_completion_logprobs_equal_transformers_log_softmax(client, hf):
    model, tok = hf
    ids, rows = _hf_greedy(model, PROMPT_IDS, 6)
    r = client.completions.create(**_greedy(max_tokens=6, logprobs=5))
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert lp.tokens == [tok.decode([t]) for t in ids]
    ref = torch.stack([rows[i][t] for i, t in enumerate(ids)])
    torch.testing.assert_close(torch.tensor(lp.token_logprobs), ref, atol=2e-4, rtol=1e-4)
    for i, top in enumerate(lp.top_logprobs):
        v, k = rows[i].topk(5)
        want = {tok.decode([int(t)]): float(x) for t, x in zip(k, v)}
        assert top.keys() == want.keys()
        assert all(abs(top[s] - want[s]) < 2e-4 for s in want)
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    # streamed: the same logprobs, spread over the chunks
    chunks = list(client.completions.create(**_greedy(max_tokens=6, logprobs=5), stream=True))
    streamed = [x for c in chunks for x in (c.choices[0].logprobs.token_logprobs if c.choices[0].logprobs else [])]
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-6)


def test_chat_logprobs_and_top_logprobs_both_ways(client):
    msgs = [{"role": "user", "content": "Count to three."}]
    kw = dict(model=MODEL, messages=msgs, temperature=0, max_completion_tokens=5, logprobs=True, top_logprobs=3,
              extra_body={"ignore_eos": True})
    r = client.chat.completions.create(**kw)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    for c in content:
        assert c.logprob <= 0 and len(c.top_logprobs) == 3
        assert c.top_logprobs[0].token == c.token and c.top_logprobs[0].logprob == pytest.approx(c.logprob)
        assert bytes(c.bytes).decode() == c.token
    assert "".join(c.token for c in content).strip() == r.choices[0].message.content.strip()
    chunks = list(client.chat.completions.create(**kw, stream=True))
    streamed = [x for ch in chunks if ch.choices and ch.choices[0].logprobs for x in ch.choices[0].logprobs.content]
    assert [x.token for x in streamed] == [c.token for c in content]
    assert [x.logprob for x in streamed] == pytest.approx([c.logprob for c in content], abs=1e-6)
    plain = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3, logprobs=True)
    assert all(c.top_logprobs == [] for c in plain.choices[0].logprobs.content)


def test_n_choices_both_ways(client):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=1.0, seed=11, n=3,
              extra_body={"ignore_eos": True})
    r = client.completions.create(**kw)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == 18
    assert len({c.text for c in r.choices}) > 1  # each choice draws from its own seed
    again = client.completions.create(**kw)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]
    texts = {0: "", 1: "", 2: ""}
    finished = set()
    for ch in client.completions.create(**kw, stream=True):
        for c in ch.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1, 2} and [texts[i] for i in range(3)] == [c.text for c in r.choices]
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2,
                                          max_tokens=4, temperature=0)
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.choices[0].message.content == chat.choices[1].message.content  # greedy: the same answer


def test_echo_both_ways(client):
    r = client.completions.create(model=MODEL, prompt="The cat", max_tokens=4, temperature=0, echo=True)
    plain = client.completions.create(model=MODEL, prompt="The cat", max_tokens=4, temperature=0)
    assert r.choices[0].text == "The cat" + plain.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The cat", max_tokens=4, temperature=0, echo=True, stream=True))
    assert streamed == r.choices[0].text


def test_echo_with_logprobs_gives_the_prompts_too(client, hf):
    """lm-eval's loglikelihood request: echo, logprobs, the prompt's logprobs against transformers'."""
    model, tok = hf
    ids, rows = _hf_greedy(model, PROMPT_IDS, 2)
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([PROMPT_IDS])).logits[0, :-1].float(), -1)
    want = [ref[j, PROMPT_IDS[j + 1]].item() for j in range(len(PROMPT_IDS) - 1)] + \
        [rows[i][t].item() for i, t in enumerate(ids)]
    r = client.completions.create(**_greedy(max_tokens=2, logprobs=1, echo=True))
    lp = r.choices[0].logprobs
    assert lp.tokens == [tok.decode([t]) for t in PROMPT_IDS + ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=2e-4)
    assert r.choices[0].text.startswith(tok.decode(PROMPT_IDS))
    chunks = list(client.completions.create(**_greedy(max_tokens=2, logprobs=1, echo=True), stream=True))
    streamed = [x for c in chunks for x in (c.choices[0].logprobs.token_logprobs if c.choices[0].logprobs else [])]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-6)
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    # max_tokens 0 scores the prompt alone, nothing generated (OpenAI's legacy completions; lm-eval's scoring)
    s = client.completions.create(**_greedy(max_tokens=0, logprobs=1, echo=True))
    assert s.choices[0].logprobs.tokens == [tok.decode([t]) for t in PROMPT_IDS]
    assert s.choices[0].logprobs.token_logprobs[1:] == pytest.approx(want[:len(PROMPT_IDS) - 1], abs=2e-4)
    assert s.usage.completion_tokens == 0 and s.choices[0].finish_reason == "length"
    assert r.choices[0].text.startswith(s.choices[0].text) and len(s.choices[0].text) < len(r.choices[0].text)


def _text_of(tok, ids):
    return tok.decode(ids, skip_special_tokens=True)


def test_presence_and_frequency_penalties_match_a_transformers_reference(client, hf):
    model, tok = hf

    def penalties(logits, out):
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[0]).float() \
            if out else torch.zeros_like(logits)
        return logits - 0.7 * counts - 1.3 * (counts > 0).float()

    ids, _ = _hf_greedy(model, PROMPT_IDS, 8, penalties)
    kw = _greedy(max_tokens=8, presence_penalty=1.3, frequency_penalty=0.7)
    r = client.completions.create(**kw)
    assert r.choices[0].text == _text_of(tok, ids)
    assert "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True)) == r.choices[0].text


def test_repetition_penalty_matches_transformers_generate(client, hf):
    model, tok = hf
    ref = model.generate(torch.tensor([PROMPT_IDS]), attention_mask=torch.ones(1, len(PROMPT_IDS), dtype=torch.long),
                         max_new_tokens=8, min_new_tokens=8, do_sample=False, repetition_penalty=1.8,
                         eos_token_id=None, pad_token_id=0)[0, len(PROMPT_IDS):].tolist()
    r = client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=8, temperature=0,
                                  extra_body={"ignore_eos": True, "repetition_penalty": 1.8})
    assert r.choices[0].text == _text_of(tok, ref)


def test_max_completion_tokens_and_stop_token_ids(client, hf):
    model, tok = hf
    ids, _ = _hf_greedy(model, PROMPT_IDS, 6)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "go"}], temperature=0,
                                       max_completion_tokens=3, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    stop_at = ids[2]
    want = ids[:ids.index(stop_at) + 1]
    for stream in (False, True):
        usage = {"stream_options": {"include_usage": True}} if stream else {}
        out = client.completions.create(**_greedy(max_tokens=6, extra_body={"stop_token_ids": [stop_at]}),
                                        stream=stream, **usage)
        if stream:
            chunks = list(out)
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
            assert chunks[-1].usage.completion_tokens == len(want)
        else:
            assert out.choices[0].finish_reason == "stop" and out.usage.completion_tokens == len(want)


@pytest.mark.parametrize("fields,param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
])
def test_unsupported_parameters_are_400_naming_them(client, fields, param):
    kw = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**kw, stream=stream)
        assert e.value.body["param"] == param and param in e.value.body["message"]


def test_metrics_parse_and_count_outcomes_and_rejections(client, server):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape():
        with urllib.request.urlopen(server[0] + "/metrics", timeout=30) as r:
            return list(text_string_to_metric_families(r.read().decode()))

    def total(fams, name, **labels):
        return sum(s.value for f in fams for s in f.samples
                   if s.name == name and all(s.labels.get(k) == str(v) for k, v in labels.items()))

    before = scrape()
    base = client.completions.create(model=MODEL, prompt="a b c", max_tokens=8, temperature=0,
                                     extra_body={"ignore_eos": True})
    stop = base.choices[0].text.strip()[1:2] or base.choices[0].text[-1]
    cut = client.completions.create(model=MODEL, prompt="a b c", max_tokens=8, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", logit_bias={"1": 1})
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    # The stop string's request is counted when its worker confirms the abort the text stream sent: wait for it.
    deadline = time.monotonic() + 20
    while True:
        after = scrape()
        ended = sum(total(after, "warmserve_requests_total", model=MODEL, outcome=o)
                    - total(before, "warmserve_requests_total", model=MODEL, outcome=o) for o in ("stop", "abort"))
        if ended >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for fam in after:
        assert fam.type in ("counter", "gauge", "histogram"), fam.name
    d = lambda name, **lab: total(after, name, **lab) - total(before, name, **lab)  # noqa: E731
    assert d("warmserve_requests_total", model=MODEL, outcome="length") == 1
    assert d("warmserve_requests_total", model=MODEL, outcome="stop") == 1
    assert d("warmserve_requests_total", model=MODEL, outcome="abort") == 0
    assert d("warmserve_rejected_requests_total", status=400) == 1
    assert d("warmserve_rejected_requests_total", status=404) == 1
    assert d("warmserve_prompt_tokens_total", model=MODEL) > 0
    assert d("warmserve_generation_tokens_total", model=MODEL) >= 8
    assert d("warmserve_request_seconds_count", model=MODEL, outcome="stop") == 1
    usage = [s for f in after for s in f.samples if s.name == "warmserve_kv_cache_usage_ratio"]
    assert usage and all(0.0 <= s.value <= 1.0 for s in usage)
    assert {s.labels["worker"] for s in usage} and all("model" in s.labels for s in usage)


def test_serve_says_what_it_does_and_when_it_is_ready(server, client):
    url, _, tmp = server
    client.models.list()
    log = (tmp / "serve.log").read_text()
    assert "warmserve serve: starting workers and loading 2 model(s): " in log
    ready = [line for line in log.splitlines() if "warmserve serve: ready: OpenAI API at " in line]
    assert len(ready) == 1 and f"{url}/v1 " in ready[0]
    # each worker's first line names the worker itself (host, pid), not only the controller it dials
    logs = [f.read_text() for f in (tmp / "logs").iterdir() if f.is_file()]
    lines = [line for text in logs for line in text.splitlines() if line.startswith("warmserve worker ")]
    assert len(lines) == 2 and all(", connecting to the controller at ipc://" in x and " on host " in x
                                   for x in lines), lines


def test_a_chat_without_max_tokens_may_run_to_the_end_of_the_context(client):
    """Found in review: a chat without max_tokens stopped at 16 tokens (the legacy completions default), and a
    prompt within 16 tokens of the context was refused over a max_tokens the client never sent. As OpenAI's chat
    and vLLM do, it now runs to the end of the context."""
    ctx = 2048  # llama-20m's max_position_embeddings

    def prompt_tokens(words: int) -> int:
        msgs = [{"role": "user", "content": "w " * words}]
        return client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1).usage.prompt_tokens

    words = 100
    per_word = (prompt_tokens(words + 100) - prompt_tokens(words)) / 100
    words = int(words + (ctx - 6 - prompt_tokens(words)) / per_word)
    while prompt_tokens(words) > ctx - 3:
        words -= 1
    left = ctx - prompt_tokens(words)
    assert 3 <= left < 16
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w " * words}],
                                       temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == left and r.choices[0].finish_reason == "length"
    short = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=0,
                                           max_tokens=3, extra_body={"ignore_eos": True})
    assert short.usage.completion_tokens == 3  # an explicit max_tokens still rules


def test_the_readme_openai_client_example_runs_as_written(server, capsys):
    """README's OpenAI client block, its base_url pointed at this server (it serves both models the block names);
    the Cluster example runs in test_readme_examples.py, which reads the README the same way."""
    from test_readme_examples import readme_python

    code = readme_python("from openai import OpenAI")
    assert code.count('base_url="http://127.0.0.1:8000/v1"') == 1
    exec(code.replace("http://127.0.0.1:8000", server[0]), {})
    out = capsys.readouterr().out
    # the chat's text and its usage on one line (the usage's repr has no newline), then the streamed completion
    assert "CompletionUsage(completion_tokens=" in out and "prompt_tokens=" in out, out
    assert out.split("CompletionUsage(", 1)[1].split("\n", 1)[1].strip(), out
