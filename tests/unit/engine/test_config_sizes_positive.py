"""config.json's size fields must be positive. Found in review: ``num_hidden_layers: -1`` (or 0) was accepted, the
checkpoint prewarmed (only its embeddings) and served garbage tokens; a ``num_key_value_heads`` of 0 was read as
num_attention_heads; a ``max_position_embeddings`` of 0 or -5 started, and the server refused every request as too long
for "this model's context of -5 tokens" (the client's fault). Each is refused as the checkpoint's error, naming the
field, its value and the fix."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from warmserve.engine.config import ModelConfig
from warmserve.engine.demo import DemoSpec, config_dict
from warmserve.engine.safetensors_header import CheckpointError
from warmserve.worker import InProcessWorker

SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
         "vocab_size", "head_dim", "max_position_embeddings")


def _cfg(**fields) -> dict:
    return {**config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=1024)), **fields}


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("key", SIZES)
def test_a_size_field_below_one_is_refused_naming_it(key, value):
    with pytest.raises(CheckpointError, match=rf"config.json's {key} is {value}: .*at least 1") as ei:
        ModelConfig.from_dict(_cfg(**{key: value}))
    assert ei.value.fields[key] == value


def test_null_head_dim_and_num_key_value_heads_still_take_their_defaults():
    c = ModelConfig.from_dict(_cfg(head_dim=None, num_key_value_heads=None))
    assert (c.head_dim, c.num_kv_heads, c.num_layers) == (16, 4, 2)


def test_heads_of_no_elements_are_refused_naming_both_fields():
    """No head_dim given and hidden_size below num_attention_heads: hidden_size // num_attention_heads is 0."""
    with pytest.raises(CheckpointError, match="hidden_size 2 is below its num_attention_heads 4"):
        ModelConfig.from_dict(_cfg(hidden_size=2, head_dim=None))


def test_a_checkpoint_with_negative_layers_is_refused_by_prewarm(tiny_dir, tmp_path):
    """Through a worker, as the review found it: prewarmed and served before."""
    d = str(tmp_path / "neg-layers")
    shutil.copytree(tiny_dir["tiny-linear"], d)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({**cfg, "num_hidden_layers": -1}, f)
    with InProcessWorker("cpu", memory_gib=0.25, prefault=False) as w:
        with pytest.raises(CheckpointError, match="num_hidden_layers is -1"):
            w.prewarm(d)
        pool = w.stats().pool
        assert pool.free_bytes == pool.total_bytes
