"""What the engine runs, checked without torch: the controller refuses a checkpoint the workers could never load
when it starts (``controller.models.controller_model``), not at the first request, which found it after three
failed starts (found in review: a GPT-2 checkpoint, or a truncated shard, gave a server that said ready and
answered every request with a 500). The worker's own checks (``engine.config``, ``engine.checkpoint``) stay the
whole ones; these are the ones that need no tensor."""

from __future__ import annotations

import json

from warmserve.engine.safetensors_header import CheckpointError, read_raw_header
from warmserve.errors import InvalidArgumentError, register

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


@register
class UnsupportedModelError(InvalidArgumentError):
    """A checkpoint's architecture or settings are outside what the engine implements."""


@register
class TensorParallelError(UnsupportedModelError):
    """A model cannot be split the asked number of ways (heads or SwiGLU width not divisible by tp). Defined here,
    beside its base and with no torch, so that a controller decoding it from a worker does not import torch
    (``errors.from_wire``; found in review: 2-3 s of its event loop and 180 MiB)."""


def architecture(cfg: dict) -> str:
    """The one of ARCHITECTURES a config.json dict describes, or UnsupportedModelError (an unknown architecture, or
    an MLP activation other than SwiGLU's silu)."""
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None) or _BY_MODEL_TYPE.get(cfg.get("model_type", ""))
    if arch is None:
        raise UnsupportedModelError(
            f"architecture {archs or cfg.get('model_type')!r} is not supported: the engine runs "
            f"{', '.join(ARCHITECTURES)}", architectures=list(archs))
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedModelError(f"hidden_act {act!r} is not supported (SwiGLU with silu only)", hidden_act=act)
    return arch


#: What transformers' configuration class of each architecture gives a key that config.json leaves out, where the
#: classes differ (transformers 5.24 LlamaConfig, Qwen2Config, MistralConfig; found in review: a Mistral config
#: without sliding_window attended over the whole context where transformers slides over 4096 tokens, and every
#: missing context length was Llama's 2048).
ARCH_DEFAULTS = {"LlamaForCausalLM": {"max_position_embeddings": 2048},
                 "Qwen2ForCausalLM": {"max_position_embeddings": 32768, "sliding_window": 4096},
                 "MistralForCausalLM": {"max_position_embeddings": 131072, "sliding_window": 4096}}


def config_value(cfg: dict, key: str, arch: str | None = None):
    """``cfg[key]``, or what transformers' class for the architecture (``arch``, else ``cfg``'s) gives it when
    config.json leaves it out: None where that class has no default of its own here."""
    if key in cfg:
        return cfg[key]
    return ARCH_DEFAULTS[arch or architecture(cfg)].get(key)


def json_object(path: str) -> dict:
    """The JSON object in a checkpoint's file (config.json, generation_config.json), or CheckpointError naming it:
    the controller's check at start and the worker's load read them alike (found in review: a corrupt
    generation_config.json failed a load with a bare JSONDecodeError)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): fix or re-download it", path=path) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds JSON {type(obj).__name__}, not the object of a Hugging Face config "
                              "file", path=path)
    return obj


def check_weight_sizes(files: list[str]) -> None:
    """Each safetensors file has a well-formed header and holds the bytes it promises (a copy or download cut
    short does not), or CheckpointError (an InvalidArgumentError) naming the file and what is wrong: the worker's
    own check (``safetensors_header.read_raw_header``), run here without torch."""
    for path in files:
        read_raw_header(path)
