"""A checkpoint's generation_config.json sets the sampling an HTTP request gets for the fields it leaves out, as vLLM
takes it (``--generation-config auto``, its default): temperature, top_p, top_k, min_p and repetition_penalty at
values other than Hugging Face's defaults, and max_new_tokens as the limit of a request that sets none. Found in
review: it was never read, so a request without temperature sampled at 1.0 where vLLM samples at the model's. Read by
``controller_model`` from the demo checkpoint (copied) and applied through the real HTTP API with the stand-in
controller of test_openai_logprobs_review.py."""

import dataclasses
import json
import shutil

import pytest

from controller_harness import demo_path
from test_openai_logprobs_review import MODEL, Ctl, _lp, _serve
from warmserve.config import ModelSpec
from warmserve.controller.models import controller_model, sampling_defaults
from warmserve.engine.safetensors_header import CheckpointError


def _with_generation_config(tmp_path, extra: dict) -> str:
    """A copy of the demo checkpoint whose generation_config.json also holds ``extra``."""
    path = tmp_path / "ckpt"
    shutil.copytree(demo_path(), path)
    file = path / "generation_config.json"
    gen = json.loads(file.read_text()) if file.exists() else {}
    file.write_text(json.dumps({**gen, **extra}))
    return str(path)


@pytest.mark.parametrize("extra,want", [
    ({"temperature": 0.6, "top_p": 0.9, "do_sample": True}, {"temperature": 0.6, "top_p": 0.9}),
    ({"temperature": 1, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}, {}),  # Hugging Face's defaults
    ({"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05, "temperature": 0},
     {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05, "temperature": 0.0}),
    ({"top_k": -1, "temperature": None}, {"top_k": 0}),  # vLLM's "no cut", as the API takes it; null: not set
])
def test_the_models_sampling_defaults_are_its_non_default_values(tmp_path, extra, want):
    path = _with_generation_config(tmp_path, extra)
    assert sampling_defaults(path) == want
    assert controller_model(ModelSpec(path=path, name="m")).sampling_defaults == want


@pytest.mark.parametrize("extra,message", [({"temperature": 5}, "temperature must be in"),
                                           ({"top_p": "high"}, "Expected `float`"),
                                           ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
                                           ({"max_new_tokens": 64.5}, "max_new_tokens must be an integer >= 1")])
def test_a_value_no_request_could_send_refuses_the_model_at_start_naming_the_file(tmp_path, extra, message):
    path = _with_generation_config(tmp_path, extra)
    with pytest.raises(CheckpointError, match=message) as e:
        controller_model(ModelSpec(path=path, name="m"))
    assert "generation_config.json" in e.value.message and "'m'" in e.value.message


def _sampled(model, defaults: dict, fields: dict):
    """The SamplingParams the controller is given for a chat and a completion with ``fields``."""
    ctl = Ctl(dataclasses.replace(model, sampling_defaults=defaults), [5], [_lp(-1.0)])

    async def go(c):
        for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                           ("/v1/completions", {"prompt": "hi"})):
            r = await c.post(path, json={"model": MODEL, "max_tokens": 1, **body, **fields})
            assert r.status == 200, await r.text()

    _serve(ctl, go)
    assert len(ctl.submitted) == 2
    return [r.sampling for r in ctl.submitted]


def test_a_request_gets_the_models_value_for_each_field_it_leaves_out_and_keeps_its_own(model):
    defaults = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05}
    for s in _sampled(model, defaults, {}):
        assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty) == (0.6, 0.9, 20, 1.05)
    for s in _sampled(model, defaults, {"temperature": 0.2, "top_p": None, "top_k": -1}):
        assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty) == (0.2, 0.9, 0, 1.05)
    for s in _sampled(model, {}, {}):  # no generation config: OpenAI's defaults
        assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty) == (1.0, 1.0, 0, 1.0)


def test_max_new_tokens_is_the_models_default_limit_not_a_sampling_default(tmp_path):
    path = _with_generation_config(tmp_path, {"max_new_tokens": 64, "temperature": 0.6})
    assert sampling_defaults(path) == {"temperature": 0.6, "max_tokens": 64}
    m = controller_model(ModelSpec(path=path, name="m"))
    assert (m.sampling_defaults, m.default_max_tokens) == ({"temperature": 0.6}, 64)
    assert controller_model(ModelSpec(path=demo_path(), name="m")).default_max_tokens is None


def _limits(model, default_max_tokens, requests):
    """(max_tokens, max_tokens_defaulted) the controller is given for each (path, body) of ``requests``."""
    ctl = Ctl(dataclasses.replace(model, default_max_tokens=default_max_tokens), [5], [_lp(-1.0)])

    async def go(c):
        for path, body in requests:
            r = await c.post(path, json={"model": MODEL, **body})
            assert r.status == 200, await r.text()

    _serve(ctl, go)
    return [(r.sampling.max_tokens, r.sampling.max_tokens_defaulted) for r in ctl.submitted]


def test_a_request_that_sets_no_limit_gets_max_new_tokens_as_vllm_gives_it(model):
    """vLLM (get_max_tokens): the file's max_new_tokens stands in for a limit the request does not set, within
    the context; a limit the client sets is its own, above the file's too; a completion that leaves max_tokens out
    gets 16 (vLLM's CompletionRequest default; an explicit null sets no limit)."""
    chat, completion = "/v1/chat/completions", "/v1/completions"
    hi = {"messages": [{"role": "user", "content": "hi"}]}
    requests = [(chat, hi), (chat, {**hi, "max_tokens": 100}), (chat, {**hi, "max_completion_tokens": 3}),
                (chat, {**hi, "min_tokens": 80}), (completion, {"prompt": "hi"}),
                (completion, {"prompt": "hi", "max_tokens": None})]
    assert _limits(model, 64, requests) == [(64, True), (100, False), (3, False), (80, True), (16, False),
                                            (64, True)]
    room = model.max_context - len(model.tokenizer.encode("hi"))
    assert _limits(model, 10 ** 9, [(completion, {"prompt": "hi", "max_tokens": None})]) == [(room, True)]
