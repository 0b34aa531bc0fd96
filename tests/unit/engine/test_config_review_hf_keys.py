"""config.json keys read as transformers 5.24 reads them (found in review, each against transformers' own model of a
tiny checkpoint): a Mistral config with layer_types (transformers runs it as Ministral, each layer by its entry), a
top-level original_max_position_embeddings (it wins over the rope dict's), a Mistral or Qwen2 config without
num_key_value_heads (each config class has its own default), and a tied config whose files hold an lm_head that
is not the embedding (the engine keeps using the embedding, and says so)."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from warmserve.engine import load_model
from warmserve.engine.config import ModelConfig, UnsupportedModelError
from warmserve.engine.demo import DemoSpec, config_dict, write_checkpoint

from tiny_checkpoints import TINY_VOCAB
from test_engine_numerics import _check_logits

#: Shorter than the 40-token prompt, so a window applied where transformers applies none changes the logits.
WINDOW = 16
MISTRAL = DemoSpec("mistral", 64, 128, 2, 4, 2, sliding_window=WINDOW, vocab_size=TINY_VOCAB)
LLAMA = DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=TINY_VOCAB, max_position_embeddings=1024)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
YARN = {"rope_type": "yarn", "factor": 4.0}


def _edit_config(path: str, drop=(), **fields) -> str:
    """Rewrite the checkpoint's config.json by hand, as a Hub checkpoint may hold it."""
    cj = os.path.join(path, "config.json")
    with open(cj) as f:
        cfg = json.load(f)
    for k in drop:
        cfg.pop(k, None)
    cfg.update(fields)
    with open(cj, "w") as f:
        json.dump(cfg, f)
    return path


@pytest.mark.parametrize("kinds, window", [
    (["full_attention", "full_attention"], 0),
    (["sliding_attention", "sliding_attention"], WINDOW),
], ids=["all-full", "all-sliding"])
def test_mistral_layer_types_decide_which_layers_slide_as_transformers_ministral(tmp_path, pool, hf_model, kinds,
                                                                                  window):
    path = _edit_config(write_checkpoint(str(tmp_path), "m", config_dict(MISTRAL)), layer_types=kinds)
    assert ModelConfig.from_dir(path).sliding_window == window
    _check_logits(path, pool, hf_model, lengths=(5, 40), decode_steps=2, atol=1e-4)


def test_mistral_layer_types_mixing_full_and_sliding_is_refused():
    cfg = dict(config_dict(MISTRAL), layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(UnsupportedModelError, match="1 of 2, from layer_types"):
        ModelConfig.from_dict(cfg)


@pytest.mark.parametrize("scaling, inside", [(LLAMA3, None), (YARN, None), (LLAMA3, 512)],
                         ids=["llama3", "yarn", "llama3-both-top-level-wins"])
def test_top_level_original_max_position_embeddings_wins_as_transformers_standardizes_it(tmp_path, pool, hf_model,
                                                                                          scaling, inside):
    rope = dict(scaling) if inside is None else dict(scaling, original_max_position_embeddings=inside)
    cfg = dict(config_dict(LLAMA), rope_theta=5e5, rope_scaling=rope, original_max_position_embeddings=64)
    path = write_checkpoint(str(tmp_path), "r", cfg)
    assert ModelConfig.from_dir(path).rope_param("original_max_position_embeddings") == 64
    # wavelengths above 64 tokens are scaled: the low-frequency dims differ from the 1024-token reading everywhere
    _check_logits(path, pool, hf_model, lengths=(5, 90), decode_steps=2, atol=1e-4)


def test_mistral_without_num_key_value_heads_takes_mistralconfig_default_of_8(tmp_path, pool, hf_model):
    spec = DemoSpec("mistral", 128, 128, 2, 16, 8, sliding_window=WINDOW, vocab_size=TINY_VOCAB)
    path = _edit_config(write_checkpoint(str(tmp_path), "kv", config_dict(spec)), drop=("num_key_value_heads",))
    assert ModelConfig.from_dir(path).num_kv_heads == 8
    _check_logits(path, pool, hf_model, lengths=(5, 40), decode_steps=2, atol=1e-4)


# MistralConfig refuses a null (its field is a plain int); the engine then takes num_attention_heads, and the
# tensors' shapes are checked against that before any weight is loaded.
@pytest.mark.parametrize("model_type, value", [("llama", "absent"), ("qwen2", "absent"), ("mistral", "absent"),
                                               ("llama", None), ("qwen2", None)])
def test_num_key_value_heads_left_out_or_null_as_each_config_class_fills_it(model_type, value):
    from transformers import AutoConfig

    cfg = config_dict(DemoSpec(model_type, 256, 128, 2, 64, 64, vocab_size=TINY_VOCAB))
    if value == "absent":
        del cfg["num_key_value_heads"]
    else:
        cfg["num_key_value_heads"] = None
    theirs = AutoConfig.for_model(**cfg)
    assert ModelConfig.from_dict(cfg).num_kv_heads == theirs.num_key_value_heads


def _tied_with_lm_head(tmp_path, same: bool) -> str:
    """A tied config whose file still holds an lm_head.weight: the embedding's copy, or another matrix."""
    from safetensors.torch import load_file, save_file

    spec = DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=TINY_VOCAB)
    path = write_checkpoint(str(tmp_path), "same" if same else "other", config_dict(spec))
    st = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    assert len(st) == 1
    tensors = load_file(os.path.join(path, st[0]))
    assert not torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"])
    if same:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        save_file(tensors, os.path.join(path, st[0]), metadata={"format": "pt"})
    return _edit_config(path, tie_word_embeddings=True)


@pytest.mark.parametrize("same", [False, True], ids=["differs", "copy"])
def test_tied_config_with_a_different_lm_head_in_the_files_logs_a_warning(tmp_path, pool, caplog, same):
    path = _tied_with_lm_head(tmp_path, same)
    with caplog.at_level(logging.WARNING, logger="warmserve.engine"):
        lm = load_model(path, pool).wait()
    try:
        # the embedding is the head either way (vLLM's behaviour)
        views = lm.weight_views()
        assert views["lm_head"].data_ptr() == views["embed"].data_ptr()
        del views
    finally:
        lm.close()
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "lm_head.weight" in r.getMessage()]
    if same:
        assert not warned
    else:
        assert len(warned) == 1 and path in warned[0].getMessage()
