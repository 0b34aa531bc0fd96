"""config.json fields read the way transformers reads them: Qwen2's sliding window (which layers slide), llama3
rope without original_max_position_embeddings, and attention_bias/mlp_bias (Llama only). transformers' own model
of each checkpoint is the reference; what the engine cannot run is refused while config.json is read."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from warmserve.engine import load_model
from warmserve.engine.config import ModelConfig, UnsupportedModelError
from warmserve.engine.demo import DemoSpec, config_dict, write_checkpoint

from tiny_checkpoints import TINY_VOCAB
from test_engine_numerics import _check_logits

#: A window shorter than the 40-token prompt, so a window applied to the wrong layers changes the logits.
WINDOW = 16
QWEN2 = DemoSpec("qwen2", 64, 128, 2, 4, 2, vocab_size=TINY_VOCAB)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}


def _qwen2(tmp_path, name, **fields) -> str:
    cfg = dict(config_dict(QWEN2), use_sliding_window=True, sliding_window=WINDOW, **fields)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    return write_checkpoint(str(tmp_path), name, cfg)


@pytest.mark.parametrize("fields, window", [
    ({"max_window_layers": 2}, 0),  # layers i >= 2 slide: none of the 2
    ({"max_window_layers": None}, 0),  # transformers' default of 28
    ({"max_window_layers": 0}, WINDOW),  # all slide
    ({"max_window_layers": 2, "layer_types": ["sliding_attention"] * 2}, WINDOW),  # layer_types win
], ids=["max_window_layers=num_layers", "default_max_window_layers", "max_window_layers=0", "layer_types"])
def test_qwen2_sliding_window_covers_the_layers_transformers_slides(tmp_path, pool, hf_model, fields, window):
    path = _qwen2(tmp_path, "q", **fields)
    assert ModelConfig.from_dir(path).sliding_window == window
    _check_logits(path, pool, hf_model, lengths=(5, 40), decode_steps=3)


@pytest.mark.parametrize("fields, key", [
    ({"max_window_layers": 1}, "max_window_layers=1"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
])
def test_qwen2_sliding_window_on_some_layers_only_is_refused_naming_the_key(fields, key):
    cfg = dict(config_dict(QWEN2), use_sliding_window=True, sliding_window=WINDOW, **fields)
    with pytest.raises(UnsupportedModelError, match=f"1 of 2, from {key}"):
        ModelConfig.from_dict(cfg)


def test_llama3_rope_without_original_max_position_embeddings_uses_max_position_embeddings(tmp_path, pool,
                                                                                         hf_model):
    # the transformers-4 layout of Hub checkpoints; transformers fills the key from max_position_embeddings
    cfg = dict(config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=TINY_VOCAB, max_position_embeddings=128)),
               rope_theta=5e5, rope_scaling=LLAMA3)
    path = write_checkpoint(str(tmp_path), "l3", cfg)
    assert ModelConfig.from_dir(path).rope_param("original_max_position_embeddings") == 128
    # wavelengths above 128 tokens are divided by the factor: the low-frequency dims differ at every position
    _check_logits(path, pool, hf_model, lengths=(5, 90), decode_steps=2)


@pytest.mark.parametrize("rope_type, drop", [("llama3", "factor"), ("llama3", "low_freq_factor"),
                                             ("linear", "factor"), ("yarn", "factor")])
def test_a_rope_scaling_missing_a_parameter_is_refused_before_any_weight_is_loaded(tmp_path, pool, rope_type, drop):
    scaling = {"llama3": LLAMA3, "linear": {"rope_type": "linear", "factor": 2.0},
               "yarn": {"rope_type": "yarn", "factor": 4.0}}[rope_type]
    spec = DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=TINY_VOCAB)
    path = write_checkpoint(str(tmp_path), "r", config_dict(spec))
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["rope_scaling"] = {k: v for k, v in scaling.items() if k != drop}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    free = pool.free_pages
    with pytest.raises(UnsupportedModelError, match=f"lacks {drop}"):
        load_model(path, pool)
    assert pool.free_pages == free


def test_mistral_ignores_attention_bias_and_mlp_bias_as_transformers_does(tiny_dir, tmp_path, pool, hf_model):
    path = str(tmp_path / "mistral-bias")
    shutil.copytree(tiny_dir["tiny-mistral"], path)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(dict(cfg, attention_bias=True, mlp_bias=True), f)
    c = ModelConfig.from_dir(path)
    assert (c.qkv_bias, c.o_bias, c.mlp_bias) == (False, False, False)
    _check_logits(path, pool, hf_model, lengths=(5, 40), decode_steps=2)


def test_llama_still_reads_attention_bias_and_mlp_bias(tiny_dir):
    c = ModelConfig.from_dir(tiny_dir["tiny-bias"])
    assert (c.qkv_bias, c.o_bias, c.mlp_bias) == (True, True, True)
    q = ModelConfig.from_dict(dict(config_dict(QWEN2), attention_bias=True, mlp_bias=True))
    assert (q.qkv_bias, q.o_bias, q.mlp_bias) == (True, False, False)


@pytest.mark.parametrize("spec, fields", [
    (DemoSpec("mistral", 64, 128, 2, 4, 1, vocab_size=TINY_VOCAB), {}),
    (QWEN2, {"use_sliding_window": True, "max_window_layers": 0}),
    (DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=TINY_VOCAB), {"use_sliding_window": True, "sliding_window": 16}),
], ids=["mistral", "qwen2-sliding", "llama-with-a-window"])
def test_keys_config_json_leaves_out_take_transformers_defaults_per_architecture(tmp_path, spec, fields):
    """Found in review: a Mistral config without sliding_window attended over the whole context (transformers
    slides over 4096 tokens), every missing max_position_embeddings was Llama's 2048 (Qwen2's is 32768,
    Mistral's 131072), and a Llama config's window was applied, which transformers' Llama never reads."""
    from transformers import AutoConfig

    cfg = dict(config_dict(spec), **fields)
    for key in ("sliding_window", "max_position_embeddings"):
        if key not in fields:
            cfg.pop(key, None)
    path = write_checkpoint(str(tmp_path), "m", cfg)
    ours, theirs = ModelConfig.from_dir(path), AutoConfig.from_pretrained(path)
    assert ours.max_position_embeddings == theirs.max_position_embeddings
    slides = spec.model_type != "llama"
    assert ours.sliding_window == (theirs.sliding_window if slides else 0)
    if slides:
        assert ours.sliding_window == 4096
