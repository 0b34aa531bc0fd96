"""A checkpoint whose parts disagree with config.json is refused when the controller reads it, naming the file and
the fix, not served: found in review, decoder layers past num_hidden_layers (or a num_hidden_layers of true, or
8.5) were left out and the model served noise with HTTP 200; another model's tokenizer passed the start unsaid and
most requests then failed at the worker (now a WARNING naming it); a checkpoint given as a file was said to have no
config.json in it. Checked without torch, on files written here (the weights are zeros: only headers are read)."""

from __future__ import annotations

import json
import logging
import math
import os
import struct

import pytest

from warmserve.config import ModelSpec
from warmserve.controller.models import controller_model
from warmserve.engine.arch import hf_tensor_shapes
from warmserve.engine.config import ModelConfig
from warmserve.engine.safetensors_header import CheckpointError
from warmserve.errors import InvalidArgumentError

from controller_harness import demo_path

#: A Llama small enough to write whole in a test: 1,000 tokens, 64 wide, 2 layers.
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1000, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 256, "torch_dtype": "float32", "eos_token_id": 0}


def _write_weights(path: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """model.safetensors holding float32 zeros of `shapes`, laid out as the safetensors library lays them."""
    header, at = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [at, at + n]}
        at += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        f.truncate(8 + len(head) + at)


def _checkpoint(tmp_path, name: str, config: dict, weights_config: dict | None = None,
                tokenizer_json: dict | None = None) -> ModelSpec:
    """A checkpoint of `config` with the weights `weights_config` calls for (default: `config`'s) and the demo
    model's tokenizer (8,192 tokens), or `tokenizer_json` in its place."""
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    _write_weights(str(path), hf_tensor_shapes(ModelConfig.from_dict(weights_config or config)))
    demo = demo_path()
    os.symlink(os.path.join(demo, "tokenizer_config.json"), path / "tokenizer_config.json")
    if tokenizer_json is None:
        os.symlink(os.path.join(demo, "tokenizer.json"), path / "tokenizer.json")
    else:
        (path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    return ModelSpec(path=str(path), name=name)


def _demo_tokenizer() -> dict:
    with open(os.path.join(demo_path(), "tokenizer.json")) as f:
        return json.load(f)


def test_a_matching_checkpoint_passes(tmp_path):
    cfg = dict(TINY, vocab_size=8192)
    assert controller_model(_checkpoint(tmp_path, "ok", cfg)).max_context == 256


def test_decoder_layers_past_num_hidden_layers_are_refused(tmp_path):
    cfg = dict(TINY, vocab_size=8192, num_hidden_layers=2)
    spec = _checkpoint(tmp_path, "short", cfg, weights_config=dict(cfg, num_hidden_layers=5))
    with pytest.raises(CheckpointError, match=r"3 decoder layer\(s\) past config.json's num_hidden_layers 2 "
                                              r"\(model.layers.2 to model.layers.4\).*set num_hidden_layers to 5"
                       ) as e:
        controller_model(spec)
    assert e.value.path == spec.path and "'short'" in str(e.value)
    assert e.value.fields["layers_past"] == [2, 3, 4]


@pytest.mark.parametrize("value, shown", [(True, "true"), (1.5, "1.5")])
def test_a_layer_count_of_true_or_a_fraction_is_refused(tmp_path, value, shown):
    """int() made true one layer and 1.5 one layer: the second layer's weights were left out, unsaid."""
    cfg = dict(TINY, vocab_size=8192)
    spec = _checkpoint(tmp_path, "odd", dict(cfg, num_hidden_layers=value), weights_config=cfg)
    with pytest.raises(CheckpointError, match=f"num_hidden_layers is {shown}: .*must be a whole number"):
        controller_model(spec)


def test_a_whole_float_size_is_taken(tmp_path):
    """A size written 64.0 (some tools write floats) is the number it says, as before."""
    cfg = dict(TINY, vocab_size=8192)
    assert controller_model(_checkpoint(tmp_path, "float", dict(cfg, hidden_size=64.0), weights_config=cfg))


def test_a_tokenizer_larger_than_the_vocabulary_is_a_warning_naming_it(tmp_path, caplog):
    """Another model's tokenizer: a WARNING at start names the file and the fix (requests whose text encodes past
    the vocabulary fail at the worker). Not a refusal: small test checkpoints run on the demo's tokenizer."""
    spec = _checkpoint(tmp_path, "other-tok", TINY)
    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        controller_model(spec)
    assert any(r.getMessage().startswith(f"{spec.path}: tokenizer.json has 8192 tokens, but config.json's vocab_size "
                                         "is 1000") and "own tokenizer.json" in r.getMessage()
               for r in caplog.records), caplog.text


def test_added_tokens_past_the_vocabulary_are_a_warning(tmp_path, caplog):
    """A pad token added without resizing the embedding fails only the requests that hold it: the model starts."""
    tok = _demo_tokenizer()
    tok["added_tokens"].append(dict(tok["added_tokens"][0], id=8192, content="<pad>"))
    spec = _checkpoint(tmp_path, "pad", dict(TINY, vocab_size=8192), tokenizer_json=tok)
    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        controller_model(spec)
    assert any("1 token(s) with ids [8192] past config.json's vocab_size 8192" in r.getMessage()
               for r in caplog.records), caplog.text


def test_a_file_given_as_the_checkpoint_is_named_a_file(tmp_path):
    spec = _checkpoint(tmp_path, "dir", dict(TINY, vocab_size=8192))
    file = os.path.join(spec.path, "model.safetensors")
    with pytest.raises(InvalidArgumentError, match=f"{file} is a file, not a checkpoint directory: .*"
                                                   f"\\({spec.path}\\?\\)"):
        controller_model(ModelSpec(path=file, name="f"))


def test_a_name_and_path_given_the_wrong_way_round_are_named_so(tmp_path):
    """`--model NAME=PATH` (the CLI takes PATH=NAME) looked for the checkpoint under the name's folder."""
    spec = _checkpoint(tmp_path, "ckpt", dict(TINY, vocab_size=8192))
    with pytest.raises(InvalidArgumentError, match=f"no checkpoint at {tmp_path}/llama .*the name is the checkpoint "
                                                   f"folder: the path comes first, as --model {spec.path}=llama"):
        controller_model(ModelSpec(path=str(tmp_path / "llama"), name=spec.path))
    with pytest.raises(InvalidArgumentError, match="run `warmserve models demo`"):  # a name that is no folder
        controller_model(ModelSpec(path=str(tmp_path / "llama"), name="llama"))


def test_a_config_without_num_key_value_heads_over_grouped_kv_weights_names_the_key(tmp_path):
    """Found in review: left out, num_key_value_heads is num_attention_heads (as transformers reads it), and a GQA
    checkpoint's k_proj then failed on its shape with no word of the key."""
    weights = dict(TINY, vocab_size=8192)
    cfg = {k: v for k, v in weights.items() if k != "num_key_value_heads"}
    with pytest.raises(CheckpointError, match=r"k_proj.weight has shape \[32, 64\], config.json implies \[64, 64\] "
                                              r"\(its rows are num_key_value_heads 2 x head_dim 32: check "
                                              r"num_key_value_heads"):
        controller_model(_checkpoint(tmp_path, "gqa", cfg, weights_config=weights))
