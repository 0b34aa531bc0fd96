"""A checkpoint's generation_config.json sets the sampling an HTTP request gets for the fields it leaves out, as vLLM
takes it (``--generation-config auto``, its default): temperature, top_p, top_k, min_p and repetition_penalty at
values other than Hugging Face's defaults. Found in review: it was never read, so a request without temperature
sampled at 1.0 where vLLM samples at the model's. Read by ``controller_model`` from the demo checkpoint (copied) and
applied through the real HTTP API with the stand-in controller of test_openai_logprobs_review.py."""

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
    ({"max_new_tokens": 64}, {}),  # the API's max_tokens defaults stay OpenAI's
])
def test_the_models_sampling_defaults_are_its_non_default_values(tmp_path, extra, want):
    path = _with_generation_config(tmp_path, extra)
    assert sampling_defaults(path) == want
    assert controller_model(ModelSpec(path=path, name="m")).sampling_defaults == want


@pytest.mark.parametrize("extra,message", [({"temperature": 5}, "temperature must be in"),
                                           ({"top_p": "high"}, "Expected `float`")])
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
