"""A config.json whose layer_types names sliding_attention layers but gives them no window (Mistral's
"sliding_window": null, found in review: the engine ran every layer with no window). transformers 5, the reference,
cannot run it (its KV cache has no window for those layers), so it is refused while config.json is read, naming the
keys; the same config with every layer full_attention runs in both, alike."""

from __future__ import annotations

import json
import os

import pytest
import torch

from warmserve.engine.config import ModelConfig, UnsupportedModelError
from warmserve.engine.demo import DemoSpec, config_dict, write_checkpoint

from tiny_checkpoints import TINY_VOCAB
from test_engine_numerics import _check_logits

S, F = "sliding_attention", "full_attention"
MISTRAL = DemoSpec("mistral", 64, 128, 4, 4, 1, vocab_size=TINY_VOCAB)
QWEN2 = DemoSpec("qwen2", 64, 128, 4, 4, 2, vocab_size=TINY_VOCAB)


def _checkpoint(tmp_path, spec: DemoSpec, fields: dict) -> str:
    """A checkpoint whose config.json holds fields (written after the weights: write_checkpoint reads the config
    with ModelConfig, which refuses these)."""
    path = write_checkpoint(str(tmp_path), "m", config_dict(spec))
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    with open(cfg_path, "w") as f:
        json.dump(dict(cfg, **fields), f)
    return path


def _transformers_runs(model) -> bool:
    """transformers' model of the checkpoint, run as the logit tests run it (a forward with its KV cache)."""
    ids = torch.arange(1, 41).unsqueeze(0) % TINY_VOCAB
    try:
        with torch.no_grad():
            model(ids)
    except (TypeError, RuntimeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("spec, fields, says", [
    (MISTRAL, {"sliding_window": None, "layer_types": [S, F, S, F]}, "sliding_window is null"),
    (MISTRAL, {"sliding_window": None, "layer_types": [S] * 4}, "sliding_window is null"),
    (MISTRAL, {"sliding_window": 0, "layer_types": [S, F, S, F]}, "sliding_window is 0"),
    (QWEN2, {"sliding_window": None, "use_sliding_window": True, "layer_types": [S, F, S, F]},
     "sliding_window is null"),
    (QWEN2, {"sliding_window": 16, "use_sliding_window": False, "layer_types": [S, F, S, F]},
     "use_sliding_window is false"),
], ids=["mistral-null-mixed", "mistral-null-all-sliding", "mistral-0-mixed", "qwen2-null", "qwen2-window-off"])
def test_sliding_layers_without_a_window_are_refused_as_transformers_cannot_run_them(tmp_path, hf_model, spec,
                                                                                   fields, says):
    path = _checkpoint(tmp_path, spec, fields)
    assert not _transformers_runs(hf_model(path))
    with pytest.raises(UnsupportedModelError, match="layer_types names") as e:
        ModelConfig.from_dir(path)
    msg = str(e.value)
    assert says in msg and "set sliding_window to the model's window" in msg and "full_attention" in msg
    assert e.value.sliding_layers == [i for i, k in enumerate(fields["layer_types"]) if k == S]


def test_mistral_window_null_with_only_full_attention_layers_runs_unwindowed_like_transformers(tmp_path, pool):
    """The refusal is only for sliding layers: with every layer full_attention the null window is no window, as in
    transformers' MistralForCausalLM (the class config.json names; AutoModel's Ministral refuses any null window)."""
    import transformers

    path = _checkpoint(tmp_path, MISTRAL, {"sliding_window": None, "layer_types": [F] * 4})
    ref = transformers.MistralForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert _transformers_runs(ref) and ModelConfig.from_dir(path).sliding_window == 0
    _check_logits(path, pool, lambda _: ref, lengths=(5, 40), decode_steps=3)
