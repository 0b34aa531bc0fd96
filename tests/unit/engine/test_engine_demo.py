"""Demo checkpoints, the tokenizer and config parsing."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from warmserve.engine import DEMO_MODELS, ModelConfig, Tokenizer, UnsupportedModelError
from warmserve.engine.demo import config_dict, main as demo_main
from warmserve.engine.kv_cache import block_layout
from warmserve.geometry import PAGE_BYTES
from warmserve.errors import InvalidArgumentError


def _digest(path):
    h = hashlib.sha256()
    for f in sorted(os.listdir(path)):
        if not f.startswith("."):
            h.update(f.encode())
            h.update(open(os.path.join(path, f), "rb").read())
    return h.hexdigest()


def test_demo_writer_is_deterministic_and_skips_up_to_date(demo_dir, tmp_path):
    from warmserve.engine.demo import write_demo_models

    again = write_demo_models(str(tmp_path), names=["llama-20m"])["llama-20m"]
    assert _digest(again) == _digest(demo_dir["llama-20m"])
    mtime = os.path.getmtime(os.path.join(again, "model.safetensors"))
    write_demo_models(str(tmp_path), names=["llama-20m"])
    assert os.path.getmtime(os.path.join(again, "model.safetensors")) == mtime


def test_demo_set_spans_sizes_architectures_and_whole_page_blocks():
    sizes, archs = [], set()
    for name, spec in DEMO_MODELS.items():
        cfg = ModelConfig.from_dict(config_dict(spec))
        sizes.append(cfg.num_params())
        archs.add(cfg.architecture)
        raw, padded = block_layout(cfg, torch.float32)
        assert raw == padded and raw % PAGE_BYTES == 0, name  # blocks are whole pages, no padding
    assert min(sizes) < 25e6 and 250e6 < max(sizes) < 550e6
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM"} <= archs


def test_transformers_loads_the_same_tokenizer(demo_dir):
    transformers = pytest.importorskip("transformers")
    path = demo_dir["qwen2-30m"]
    ours = Tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(path)
    text = "Hello world! def f(x): return x * 42  # ünïcode ✓"
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
    assert ours.decode(ours.encode(text)) == text
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(msgs) == theirs.apply_chat_template(msgs, tokenize=False,
                                                                        add_generation_prompt=True)
    # a generation ends at the end of the chat template's turn, <|im_end|>, as well as at <|endoftext|>
    assert ours.eos_token_ids == (0, ours.token_to_id("<|im_end|>")) and ours.vocab_size == 8192
    assert list(transformers.GenerationConfig.from_pretrained(path).eos_token_id) == list(ours.eos_token_ids)
    with pytest.raises(InvalidArgumentError):
        ours.apply_chat_template([{"content": "no role"}])


def test_plain_chat_fallback_without_template(tmp_path, demo_dir):
    import shutil

    shutil.copy(os.path.join(demo_dir["llama-20m"], "tokenizer.json"), tmp_path / "tokenizer.json")
    tok = Tokenizer(str(tmp_path))
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "user: hi\nassistant:"


def test_config_reads_both_rope_spellings_and_rejects_the_unsupported():
    base = config_dict(DEMO_MODELS["llama-90m"])
    a = ModelConfig.from_dict(base)
    new_style = dict(base)
    new_style.pop("rope_scaling")
    new_style.pop("rope_theta")
    new_style["rope_parameters"] = dict(DEMO_MODELS["llama-90m"].rope_scaling, rope_theta=5e5)
    b = ModelConfig.from_dict(new_style)
    assert (a.rope_type, a.rope_theta, a.rope_params) == (b.rope_type, b.rope_theta, b.rope_params) == \
        ("llama3", 5e5, a.rope_params)
    assert a.rope_param("factor") == 4.0
    for bad in ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, {"hidden_act": "gelu"},
                {"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, {"num_key_value_heads": 5}):
        with pytest.raises(UnsupportedModelError):
            ModelConfig.from_dict(dict(base, **bad))


def test_cli_writes_demo_models(tmp_path, capsys):
    import argparse

    from warmserve.engine import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    assert demo_main(parser.parse_args(["--out", str(tmp_path), "--models", "llama-20m"])) == 0
    assert "llama-20m" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "llama-20m" / "config.json")
